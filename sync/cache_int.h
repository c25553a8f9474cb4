/*
 * cache_int — what sync/cache.c and sync/cache_verify.c share: the cache's structures, their
 * locking rules and the helpers both halves call. Private to the cache module: nothing outside
 * those two files includes it; the API is sync/cache.h.
 *
 * cache.c holds handles, chunk writes, completion, names, pins and space; cache_verify.c holds
 * what re-reads cache files against their hashes (cache_check, and at open the loading of the
 * catalog's rows, the reconciliation with the cache directory and the re-check of partial
 * copies after an unclean stop of another boot).
 *
 * Locking. Order: c->persist_lock, then c->lock, then f->lock.
 * - c->lock protects the tables, the LRU list, the counters and the fields marked so in versions
 *   and names. It is held for memory work and metadata syscalls (open, ftruncate, rename, stat),
 *   never across a catalog call or data I/O (pread/pwrite, hashing, unlink of a big file).
 * - f->lock (one per version) protects its bitmap, chunk list and completion; the read path
 *   (chunk_present, range_present) takes only it.
 * - c->persist_lock is held by a writer from its memory change until its catalog write is done,
 *   so rows are written in the order memory changed (two chunk writes of one version committing
 *   their bitmaps in the other order would lose a bit, or bring back one a check had cleared).
 *   It is the one lock here held across a catalog call: it guards no memory, no reader takes
 *   it, and the writers it orders would queue on the catalog's own mutex anyway.
 */
#ifndef MESHFS_CACHE_INT_H
#define MESHFS_CACHE_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sync/cache.h"
#include "sync/catalog.h"
#include "sync/hash.h"

/* Catalog meta key: the boot_id while the cache is open, CACHE_SESSION_CLEAN after a synced
 * close (see cache.c's header and cache_load). */
#define CACHE_SESSION_KEY "cache_session"
#define CACHE_SESSION_CLEAN "clean"
#define CACHE_TRASH_NAME_MAX 80	/* "<32 hex>.<20 digits>.dead" */
#define CACHE_HEX_LEN 32

struct cache_name {
	struct cache_name *hnext;	/* names table chain; c->lock */
	struct cache_name *fnext;	/* next name of the same version; c->lock */
	struct cache_file *file;	/* the version held for it, NULL if none; c->lock */
	bool pinned;			/* c->lock */
	char *last_error;		/* NULL if none; c->lock */
	uint64_t key_hash;		/* read-only */
	const char *path;		/* read-only, points into key */
	char key[];			/* read-only: category '\0' path '\0' */
};

struct cache_file {
	struct cache *c;
	struct hash128 hash;		/* read-only */
	char hex[CACHE_HEX_LEN + 1];	/* read-only: the file's name */
	uint64_t size;			/* read-only */
	size_t nchunks;			/* read-only */
	int fd;				/* open while refs > 0 (stable for holders); c->lock */

	/* protected by c->lock */
	unsigned refs;
	bool detached;			/* out of the tables, file unlinked */
	struct cache_name *names;
	struct cache_file *hnext;
	struct cache_file *lru_prev, *lru_next;
	int64_t last_access;
	bool access_dirty;		/* last_access is newer than the catalog's */

	pthread_mutex_t lock;		/* protects the fields below */
	uint8_t *present;		/* bit i in byte i / 8, LSB first */
	struct hash128 *chunks;		/* nchunks expected hashes; NULL until known */
	uint64_t cached_bytes;		/* bytes of the present chunks */
	bool complete;
	int64_t synced_at;		/* 0 unless complete */
};

struct cache {
	struct catalog *cat;		/* borrowed */
	char *dir;			/* read-only */
	int dir_fd;			/* read-only */
	uint64_t max_size;		/* read-only; 0 = none */
	double min_free_pct;		/* read-only */
	uint64_t min_free_bytes;	/* read-only */

	pthread_mutex_t persist_lock;	/* orders this module's catalog writes (above) */
	pthread_mutex_t lock;		/* protects the fields below */
	struct cache_file **files;	/* by hash, chained through hnext; power-of-2 buckets */
	size_t n_files, files_cap;
	struct cache_name **names;	/* by (category, path), chained through hnext */
	size_t n_names, names_cap;
	size_t n_pins;			/* names with pinned set */
	struct cache_file *lru_head;	/* least recently used first; attached versions only */
	struct cache_file *lru_tail;
	uint64_t used;
	uint64_t reserved;
	uint64_t trash_seq;
};

/* A copy of what a row records about a version, taken under the locks, written without. */
struct cache_snap {
	uint8_t *present;
	size_t present_len;
	struct hash128 *chunks;
	uint64_t cached_bytes;
	int64_t synced_at;
	int64_t last_access;
	bool detached;
};

/* ---- bitmaps and chunk sizes ---- */

static inline size_t cache_bitmap_len(size_t nchunks)
{
	return (nchunks + 7) / 8;
}

static inline bool cache_bit_get(const uint8_t *b, size_t i)
{
	return (b[i / 8] >> (i % 8)) & 1;
}

static inline void cache_bit_set(uint8_t *b, size_t i)
{
	b[i / 8] |= (uint8_t)(1u << (i % 8));
}

static inline void cache_bit_clear(uint8_t *b, size_t i)
{
	b[i / 8] &= (uint8_t)~(1u << (i % 8));
}

/* The length of chunk @idx of @f: HASH_CHUNK_SIZE, the last one may be short. */
static inline uint64_t cache_chunk_len(const struct cache_file *f, size_t idx)
{
	uint64_t off = (uint64_t)idx * HASH_CHUNK_SIZE;
	uint64_t left = f->size - off;

	return left < HASH_CHUNK_SIZE ? left : HASH_CHUNK_SIZE;
}

static inline uint64_t cache_sub_clamp(uint64_t a, uint64_t b)
{
	return a > b ? a - b : 0;
}

/* ---- defined in cache.c ---- */

/* A valid (category, path) for a pin: a file, a directory, or with "" the whole category. */
bool cache_valid_pin_key(const char *category, const char *path);

/* A new name with nothing recorded (not in the table), or NULL. cache_name_free(NULL) is a
 * no-op. */
struct cache_name *cache_name_new(const char *category, const char *path);
void cache_name_free(struct cache_name *n);
/* Adds @n to the names table (counting its pin). 0 or -ENOMEM. c->lock held. */
int cache_names_insert(struct cache *c, struct cache_name *n);

/* The version with content @hash, or NULL. c->lock held. */
struct cache_file *cache_files_find(struct cache *c, const struct hash128 *hash);
/* Adds @f to the versions table. 0 or -ENOMEM. c->lock held. */
int cache_files_insert(struct cache *c, struct cache_file *f);
/* Puts @f at the most recently used end of the LRU list. c->lock held. */
void cache_lru_append(struct cache *c, struct cache_file *f);

/* A new version of @size bytes with nothing present, no fd and no names (in no table), or
 * NULL. cache_file_free closes its fd if open; NULL is a no-op. */
struct cache_file *cache_file_new(struct cache *c, const struct hash128 *hash, uint64_t size);
void cache_file_free(struct cache_file *f);
/* Takes a reference, opening the file for the first one. 0 or -errno. c->lock held. */
int cache_file_ref_locked(struct cache *c, struct cache_file *f);
/*
 * Takes @f out of the tables and the LRU list, unlinks it from its names (freeing those that
 * record nothing else) and renames its file to @trash (to be unlinked with cache_trash_unlink
 * once the lock is dropped; "" when there is none). Returns true when nobody holds @f: the
 * caller then frees it; otherwise the last cache_file_put does. c->lock held.
 */
bool cache_file_detach_locked(struct cache *c, struct cache_file *f,
			      char trash[CACHE_TRASH_NAME_MAX]);
/* Unlinks @trash from the cache directory ("" is a no-op; failures are logged). No lock. */
void cache_trash_unlink(struct cache *c, const char *trash);

/* True when every chunk of @f is present. f->lock held (or @f not shared yet). */
bool cache_all_present(const struct cache_file *f);

/* Copies what the rows of @f record into @s (free with cache_snap_free). 0 or -ENOMEM.
 * c->lock and f->lock held. */
int cache_snap_take(const struct cache_file *f, bool with_chunks, struct cache_snap *s);
void cache_snap_free(struct cache_snap *s);
/* Writes @s's bitmap, bytes and synced_at to every row of @f (@error as in
 * catalog_local_set_present); a failure is logged and returned. persist_lock held. */
int cache_persist_present(struct cache *c, struct cache_file *f, const struct cache_snap *s,
			  const char *error);

/*
 * Stores @chunks as the version's chunk list (persisted). A different list already known for a
 * complete copy is refused (-EINVAL: the copy was verified whole) unless @force, which
 * cache_check uses after it verified the content itself. Takes the locks itself.
 */
int cache_store_chunks(struct cache_file *f, const struct hash128 *chunks, size_t n, bool force);

/* ---- defined in cache_verify.c ---- */

/*
 * At open, before @c is shared: loads the catalog's rows (dropping malformed ones), orders the
 * LRU list by last access, drops versions whose file is gone or has the wrong size and files
 * nothing records, re-verifies partial copies after an unclean stop of another boot, marks
 * the session open and counts c->used. 0 or -errno.
 */
int cache_load(struct cache *c);

#endif
