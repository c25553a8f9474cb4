/*
 * catalog — what this node knows, kept in SQLite (WAL mode) at <state_dir>/catalog.db.
 *
 * Tables: hosts (each host's manifest position), entries (every version of every file a host
 * publishes: category, path, size, mtime_ns, hash, origin, seq, deleted; for this node's own
 * files also the dev/ino/ctime seen when it was hashed, so a restart rehashes nothing that is
 * unchanged), chunks (per-chunk hashes), local (what is present here, pins) and queue (sync
 * jobs, used by the AutoSync issue). The schema carries a version (PRAGMA user_version) and
 * is brought forward by an ordered list of migrations, each in one transaction.
 *
 * Every change is one transaction, so a kill -9 at any moment leaves a consistent catalog.
 * seq is per host, strictly increasing, and for this node is handed out by the catalog
 * itself inside the same transaction that records the change.
 *
 * A struct catalog is one SQLite connection guarded by its own mutex: every call may be made
 * from any thread, and none holds the mutex on return. Callers must not call the catalog
 * while holding locks of other modules that a catalog callback could take (callbacks run
 * with the catalog mutex held).
 */
#ifndef MESHFS_CATALOG_H
#define MESHFS_CATALOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sync/hash.h"

#define CATALOG_SCHEMA_VERSION 4

struct catalog;

/* One version of one file as a host publishes it. Strings are borrowed: in callbacks they
 * live until the callback returns; as inputs they are copied. */
struct cat_entry {
	const char *host;	/* the host whose manifest lists it */
	const char *category;
	const char *path;	/* relative to the category, clean (see path_is_clean_relative) */
	uint64_t size;
	int64_t mtime_ns;
	struct hash128 hash;
	const char *origin;	/* the host that produced this version */
	int64_t seq;
	bool deleted;
	/* For this node's own files: identity of the hashed file, to skip rehashing. */
	uint64_t dev;
	uint64_t ino;
	int64_t ctime_ns;
	int64_t confirmed_at;	/* unix seconds its origin last confirmed it */
};

/*
 * Opens (creating if needed) the catalog at @path and migrates it to
 * CATALOG_SCHEMA_VERSION. Returns 0 and *out, or -errno: -EROFS/-EACCES for an unwritable
 * location, -EPROTO for a file that is not a catalog or is newer than this build (the detail
 * is logged).
 */
int catalog_open(const char *path, struct catalog **out);
void catalog_close(struct catalog *cat);

/* The schema version of the open catalog. */
int catalog_schema_version(struct catalog *cat);

/*
 * Records a new or changed version of this node's own file (host = origin = @e->host) in one
 * transaction: assigns it the next seq (returned in *seq), replaces its chunk hashes with
 * @chunks[0..n_chunks), clears the deleted flag. @e->seq is ignored.
 */
int catalog_publish_local(struct catalog *cat, const struct cat_entry *e,
			  const struct hash128 *chunks, size_t n_chunks, int64_t *seq);

/* One publication of a batch: inputs borrowed for the call, @seq filled in on success. */
struct cat_publish {
	struct cat_entry e;
	const struct hash128 *chunks;
	size_t n_chunks;
	const struct hash128 *blocks;	/* NULL: not known; else ceil(size / HASH_BLOCK_SIZE) */
	size_t n_blocks;
	int64_t seq;		/* out */
};

/*
 * catalog_publish_local() for @n entries in one transaction: all of them are recorded, in
 * array order with increasing seqs (pubs[i].seq), or none is. Returns 0 or -errno; -EINVAL
 * (nothing recorded) when any of them would be refused by catalog_publish_local(). Meant for
 * a scan that publishes many files: one commit instead of one per file.
 */
int catalog_publish_local_batch(struct catalog *cat, struct cat_publish *pubs, size_t n);

/*
 * Marks @host's entry (category, path) deleted with the next seq, in one transaction.
 * Returns 0, -ENOENT if there is no live entry.
 */
int catalog_delete_local(struct catalog *cat, const char *host, const char *category,
			 const char *path, int64_t *seq);

/* Updates confirmed_at (and nothing else; seq unchanged) of a live entry. 0 or -ENOENT. */
int catalog_confirm(struct catalog *cat, const char *host, const char *category,
		    const char *path, int64_t confirmed_at);

/*
 * Looks up @host's entry (category, path), deleted or not. Returns 0 and calls @fn once,
 * -ENOENT if there is none.
 */
int catalog_get(struct catalog *cat, const char *host, const char *category, const char *path,
		void (*fn)(void *arg, const struct cat_entry *e), void *arg);

/*
 * Calls @fn for each live (not deleted) entry of @host (every host when NULL) in seq order.
 * A non-zero return from @fn stops the walk and is returned.
 */
int catalog_foreach(struct catalog *cat, const char *host,
		    int (*fn)(void *arg, const struct cat_entry *e), void *arg);

/* Calls @fn for each entry of @host with seq > @since, deleted ones included, in seq order. */
int catalog_changes(struct catalog *cat, const char *host, int64_t since,
		    int (*fn)(void *arg, const struct cat_entry *e), void *arg);

/* The chunk hashes of @host's entry: a new array in *out (free()), its length in *n. */
int catalog_get_chunks(struct catalog *cat, const char *host, const char *category,
		       const char *path, struct hash128 **out, size_t *n);

/*
 * The hashes of blocks [@first, @first + @n) (HASH_BLOCK_SIZE each) of @host's live entry
 * (category, path), provided its version is still @version, into @out. One statement, so they
 * belong to that version. Returns 0, -ENOENT (no such live version, or the blocks pass its
 * end), -ENODATA (its block hashes were not recorded), or -errno.
 */
int catalog_get_blocks(struct catalog *cat, const char *host, const char *category,
		       const char *path, const struct hash128 *version, uint64_t first, size_t n,
		       struct hash128 *out);

/*
 * Lists this node's complete copy of another host's version in this node's manifest (see
 * catalog_replicas.c): @e->host is this node, @e->origin the producer, @chunks its chunk
 * hashes. Takes the next seq (in *seq). Returns 0, -EEXIST when this node has its own file at
 * that path (its own data wins), -EINVAL, or -errno.
 */
int catalog_publish_replica(struct catalog *cat, const struct cat_entry *e,
			    const struct hash128 *chunks, size_t n_chunks, int64_t *seq);

/*
 * Withdraws the replica entry (@host = this node, category, path) of version @hash with the
 * next seq (in *seq). Returns 0, -ENOENT when there is no such live replica (own data is never
 * touched), or -errno.
 */
int catalog_drop_replica(struct catalog *cat, const char *host, const char *category,
			 const char *path, const struct hash128 *hash, int64_t *seq);

/* The highest seq handed out for @host (0 if none). */
int catalog_max_seq(struct catalog *cat, const char *host, int64_t *seq);

/* Counts and total bytes of @host's live entries (every host's when NULL). Cheap: kept up to
 * date by the connection itself, not counted per call (see catalog.c). */
int catalog_totals(struct catalog *cat, const char *host, uint64_t *files, uint64_t *bytes);

/* Pins (keeps out of eviction) or unpins (category, path) on this node. */
int catalog_set_pin(struct catalog *cat, const char *category, const char *path, bool pinned);
/* 0 with *pinned set; a path never pinned is not pinned. */
int catalog_get_pin(struct catalog *cat, const char *category, const char *path, bool *pinned);

/* Small persistent key/value settings (e.g. the node identity the catalog was made for). */
int catalog_meta_get(struct catalog *cat, const char *key, char **value);
int catalog_meta_set(struct catalog *cat, const char *key, const char *value);

/* ---- serving this node's manifest (catalog.c) ---- */

/*
 * Like catalog_changes() but stops after @limit entries, so a manifest can be sent in pages
 * without holding the catalog across network writes. Returns 0, or what @fn returned.
 */
int catalog_changes_page(struct catalog *cat, const char *host, int64_t since, size_t limit,
			 int (*fn)(void *arg, const struct cat_entry *e), void *arg);

/* ---- other hosts' manifests (catalog_peers.c) ---- */

/*
 * Where this node is in @host's manifest: the last seq applied (0 = never pulled) and the
 * unix time of the last successful pull (0 = never). A host never seen gives 0 and 0.
 */
int catalog_host_get(struct catalog *cat, const char *host, int64_t *last_seq,
		     int64_t *last_seen);

/*
 * Applies @n entries of @host's manifest in one transaction: a live entry is inserted or
 * replaces the one at (host, category, path) (its chunks are dropped: they belong to the old
 * version), a deleted one marks it deleted. Then the host's position becomes @last_seq and its
 * last_seen @seen. Every entry must have e->host equal to @host, a clean path, and seq <=
 * @last_seq; otherwise nothing is applied and -EINVAL is returned. @n may be 0 (only the
 * position and last_seen move).
 */
int catalog_apply_remote(struct catalog *cat, const char *host, const struct cat_entry *entries,
			 size_t n, int64_t last_seq, int64_t seen);

/* Forgets every entry of @host and sets its position back to 0, in one transaction (used when
 * the host's seq went backwards: it has a new catalog). */
int catalog_reset_host(struct catalog *cat, const char *host);

/* Calls @fn for every live entry of any host other than @self_host (at start, to rebuild the
 * namespace's view of the cluster). */
int catalog_foreach_remote(struct catalog *cat, const char *self_host,
			   int (*fn)(void *arg, const struct cat_entry *e), void *arg);

/* ---- this node's cache (catalog_cache.c) ---- */

/*
 * One row of table `local`: what this node holds of (category, path), its pin and its last
 * fetch error. Strings and arrays are borrowed: in callbacks they live until the callback
 * returns; as inputs they are copied.
 */
struct cat_local {
	const char *category;
	const char *path;		/* "" or a directory for pins */
	bool has_version;		/* a copy (partial or complete) of @hash is recorded */
	struct hash128 hash;
	uint64_t size;
	const uint8_t *present;		/* chunk bitmap: bit i in byte i / 8, LSB first */
	size_t present_len;		/* bytes of @present (may be short: missing bits are 0) */
	const struct hash128 *chunks;	/* the version's chunk hashes; NULL when not known */
	size_t n_chunks;
	uint64_t cached_bytes;
	int64_t synced_at;		/* unix seconds the copy was completed; 0 = not complete */
	int64_t last_access;		/* unix seconds; 0 = never */
	bool pinned;
	const char *last_error;		/* NULL if none */
};

/* Calls @fn for every row of `local`. A non-zero return from @fn stops the walk and is
 * returned. A row with a malformed version (bad hash, no size) comes with has_version false. */
int catalog_local_foreach(struct catalog *cat, int (*fn)(void *arg, const struct cat_local *l),
			  void *arg);

/* Records version @l->hash (size, bitmap, chunks, cached_bytes, synced_at, last_access) for
 * (@l->category, @l->path), creating the row if needed; its pin and last_error are kept. */
int catalog_local_put(struct catalog *cat, const struct cat_local *l);

/*
 * For every row holding version @hash: the bitmap, cached bytes and synced_at (0 = not
 * complete); and unless @error is NULL its last_error ("" clears it).
 */
int catalog_local_set_present(struct catalog *cat, const struct hash128 *hash,
			      const uint8_t *present, size_t present_len, uint64_t cached_bytes,
			      int64_t synced_at, const char *error);

/* The chunk hashes of version @hash (every row holding it). */
int catalog_local_set_chunks(struct catalog *cat, const struct hash128 *hash,
			     const struct hash128 *chunks, size_t n);

/* Moves last_access of version @hash forward to @when (never back). */
int catalog_local_touch(struct catalog *cat, const struct hash128 *hash, int64_t when);

/*
 * Forgets the copy of version @hash (every row), or with @hash NULL the copy recorded at
 * (@category, @path). Rows left with neither a pin nor an error are deleted, in the same
 * transaction.
 */
int catalog_local_drop(struct catalog *cat, const struct hash128 *hash, const char *category,
		       const char *path);

/* Sets (NULL or "" clears) the last fetch error of (category, path); a row that then records
 * nothing is deleted. */
int catalog_local_set_error(struct catalog *cat, const char *category, const char *path,
			    const char *msg);

/* Deletes rows that record nothing (no copy, no pin, no error): (category, path) only, or
 * every such row when @category is NULL. */
int catalog_local_prune(struct catalog *cat, const char *category, const char *path);

/*
 * catalog_meta_set() that is durable on return, with every commit before it (one commit with
 * synchronous = FULL). For markers that must survive a power cut.
 */
int catalog_meta_set_durable(struct catalog *cat, const char *key, const char *value);

#endif
