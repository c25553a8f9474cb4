/*
 * cache — this node's copies of other nodes' file versions, complete or partial.
 *
 * Each cached version is one sparse file <state_dir>/cache/<32 hex of its hash>, written chunk
 * by chunk (4 MiB, HASH_CHUNK_SIZE) as chunks arrive, verified by the caller before they are
 * written. What is present is a per-chunk bitmap kept in memory and persisted in the catalog
 * (table `local`, with the chunk hash list, cached bytes, synced_at, last access, pin and last
 * error), so partial progress survives a restart. A version is complete once every chunk is
 * present and the whole-file hash, read back from disk, matches.
 *
 * Space: cache.max_size (0 = no limit) bounds the bytes of all cache files, and cache.min_free
 * (percent or bytes) the free space left on the cache's filesystem. A fetch reserves the
 * space of the chunks it will write first (cache_reserve); when the room is not there, least
 * recently used complete copies that are neither pinned nor open are evicted; when that is not
 * enough the reservation fails with -ENOSPC and nothing is half-written. This node's own data
 * is never in the cache, so it is never evicted.
 *
 * Threads: every call may come from any thread. cache->lock protects the table of versions and
 * the usage counters; each struct cache_file has its own mutex for its bitmap. Only
 * cache->persist_lock is held across this module's catalog writes, to keep them in the order
 * memory changed; no lock is held across file I/O of chunk size.
 */
#ifndef MESHFS_CACHE_H
#define MESHFS_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sync/catalog.h"
#include "sync/config.h"
#include "sync/hash.h"

struct cache;
struct cache_file;

enum cache_state {
	CACHE_NONE,	/* nothing of this version here */
	CACHE_PARTIAL,	/* some chunks present */
	CACHE_COMPLETE,	/* every chunk present and the whole-file hash verified */
};

struct cache_info {
	enum cache_state state;
	struct hash128 hash;	/* the version cached (for (category, path) lookups) */
	uint64_t size;
	uint64_t cached_bytes;	/* bytes present and verified */
	int64_t synced_at;	/* unix seconds it became complete; 0 if not */
	bool pinned;
	char last_error[256];	/* "" if none */
};

/*
 * Opens the cache of the node configured in @cfg on @cat: creates <state_dir>/cache (0700),
 * loads what the catalog says is present, and drops cache files the catalog does not know
 * (left by a crash between write and record) and records whose file is gone.
 * Returns 0 and *out, or -errno.
 */
int cache_open(const struct mfs_config *cfg, struct catalog *cat, struct cache **out);
void cache_close(struct cache *c);

/*
 * A referenced handle on version @hash (of @size bytes) of (category, path), created empty if
 * new. If (category, path) had another version cached, that copy is dropped unless it is open
 * (then it goes when its last handle is put). Release with cache_file_put(). 0 or -errno.
 */
int cache_file_get(struct cache *c, const char *category, const char *path,
		   const struct hash128 *hash, uint64_t size, struct cache_file **out);

/*
 * Like cache_file_get() when (category, path) has version @hash cached already (whole or in
 * part); -ENOENT when it has not, and then nothing is created. Touches neither the disk nor
 * the catalog: cheap enough for an open().
 */
int cache_file_find(struct cache *c, const char *category, const char *path,
		    const struct hash128 *hash, uint64_t size, struct cache_file **out);
void cache_file_put(struct cache_file *f);

/* The version's hash and size. */
const struct hash128 *cache_file_hash(const struct cache_file *f);
uint64_t cache_file_size(const struct cache_file *f);
size_t cache_file_nchunks(const struct cache_file *f);

/* An fd open O_RDWR on the cache file, owned by the handle (valid until the last put). */
int cache_file_fd(const struct cache_file *f);

/* Stores the version's chunk hashes (persisted). -EINVAL if @n does not match the size. */
int cache_file_set_chunks(struct cache_file *f, const struct hash128 *chunks, size_t n);
/* Copies chunk @idx's expected hash to *out; -ENOENT before cache_file_set_chunks. */
int cache_file_chunk_hash(struct cache_file *f, size_t idx, struct hash128 *out);

bool cache_file_chunk_present(struct cache_file *f, size_t idx);
/* True when every byte of [off, off+len) (clipped to the size) is present. */
bool cache_file_range_present(struct cache_file *f, uint64_t off, uint64_t len);

/*
 * Writes chunk @idx (@len bytes: the chunk's full length, the last one may be short), which the
 * caller has verified against its hash, and marks it present (persisted in the catalog).
 * Space for it must have been reserved with cache_reserve (the reservation is consumed).
 * 0, -EINVAL for a wrong length, -ENOSPC/-EIO from the disk (the chunk stays absent).
 */
int cache_file_write_chunk(struct cache_file *f, size_t idx, const void *buf, size_t len);

/*
 * Marks chunk @idx (@len bytes, its full length) present when the caller has itself written it
 * into cache_file_fd() as it arrived and verified it against its hash; the reservation is
 * consumed as with cache_file_write_chunk. 0 or -EINVAL.
 */
int cache_file_commit_chunk(struct cache_file *f, size_t idx, size_t len);

/*
 * Once every chunk is present: reads the file back, checks the whole-file hash, and marks the
 * version complete (synced_at = now). -EAGAIN if chunks are missing; -EBADMSG on a mismatch
 * (every chunk is marked absent again and the error recorded).
 */
int cache_file_finish(struct cache_file *f);

bool cache_file_complete(struct cache_file *f);
uint64_t cache_file_cached_bytes(struct cache_file *f);
/* Marks the version used now (LRU order; persisted lazily). */
void cache_file_touch(struct cache_file *f);

/* Records @msg as the last fetch error of (category, path) ("" clears it). */
void cache_set_error(struct cache *c, const char *category, const char *path, const char *msg);

/* What is cached for (category, path). Returns 0 (state CACHE_NONE when nothing). */
int cache_lookup(struct cache *c, const char *category, const char *path,
		 struct cache_info *info);

/*
 * Makes room for @bytes more (evicting as described above). 0, or -ENOSPC when even after
 * evicting everything evictable the limits would be broken. cache_release() gives back what a
 * fetch reserved but did not write.
 */
int cache_reserve(struct cache *c, uint64_t bytes);
void cache_release(struct cache *c, uint64_t bytes);

/* xattr user.meshfs.evict: drops the copy of (category, path). -EBUSY if it is open, -ENOENT
 * if nothing is cached. */
int cache_evict(struct cache *c, const char *category, const char *path);

/* xattr user.meshfs.pin: a pinned copy is never evicted. Also for paths not cached yet. */
int cache_set_pin(struct cache *c, const char *category, const char *path, bool pinned);

/* Bytes used by cache files and the limit (0 = none). */
void cache_usage(struct cache *c, uint64_t *used, uint64_t *max);

/* Bytes a new version could take now, counting what eviction would free (max_size and
 * min_free both apply; the free disk space when neither is set); 0 on error. */
uint64_t cache_room(struct cache *c);

/*
 * meshfs check: re-verifies every present chunk of every cached version against its hash, and
 * every complete version's whole hash. A bad chunk is marked absent (a complete version becomes
 * partial) and reported through @report. Returns the number of versions checked, or -errno.
 */
int cache_check(struct cache *c,
		void (*report)(void *arg, const char *category, const char *path, const char *what),
		void *arg);

#endif
