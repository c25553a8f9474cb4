/*
 * indexer — keeps the catalog in step with this node's own data directories.
 *
 * One thread ("meshfs-index") owns a job queue. A full scan walks every category directory of
 * this node (config_category_dir), and for each regular file compares (dev, ino, size,
 * mtime_ns, ctime_ns) with the catalog: unchanged files are not reread, changed or new ones are
 * hashed (hash_fd: whole file + 4 MiB chunks) and published with a new seq; catalog entries
 * whose file is gone are marked deleted. inotify watches every directory so changes made
 * directly in the data dirs are seen within moments, and a periodic rescan is the safety net
 * for what inotify misses (overflow, NFS). A file is published only once it has been unchanged
 * for publish_quiet_seconds and has no "<file>.writing" sidecar; sidecars themselves and
 * files ending in ".writing" are never published.
 *
 * The indexer tells its owner what changed through struct indexer_ops; the callbacks run on
 * the indexer thread with no indexer lock held, and may call into the namespace.
 * An unreadable file is skipped, logged, and counted (indexer_stats), never fatal.
 */
#ifndef MESHFS_INDEXER_H
#define MESHFS_INDEXER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sync/catalog.h"
#include "sync/config.h"

struct indexer;

struct indexer_ops {
	/* A file of category @cat_idx was published (new or changed); @e is its catalog entry. */
	void (*published)(void *arg, size_t cat_idx, const struct cat_entry *e);
	/* The live entry (category @cat_idx, @path) was deleted from the catalog. */
	void (*deleted)(void *arg, size_t cat_idx, const char *path);
	/* A directory @path (relative to the category, "" for its root) exists on disk. */
	void (*dir_seen)(void *arg, size_t cat_idx, const char *path);
	/* A directory is gone from disk. */
	void (*dir_gone)(void *arg, size_t cat_idx, const char *path);
	/* A symbolic link @path exists on disk (may be NULL: not wanted). */
	void (*symlink_seen)(void *arg, size_t cat_idx, const char *path);
};

struct indexer_stats {
	uint64_t files;		/* live published files */
	uint64_t bytes;
	uint64_t hashed_files;	/* files (re)hashed since start */
	uint64_t hashed_bytes;
	uint64_t unreadable;	/* files skipped because they could not be read, last scan */
	char last_unreadable[512]; /* "category/path: strerror" of the latest one, "" if none */
	int64_t last_scan_done;	/* unix seconds; 0 before the first full scan finished */
	int64_t last_scan_ms;	/* how long it took */
};

/*
 * Starts the indexer thread for this node (cfg->self) over @cat. It first runs a full scan.
 * @rescan_seconds is the safety-net interval (0 = default 300). Returns 0 or -errno;
 * *out is owned by the caller and released with indexer_stop().
 */
int indexer_start(const struct mfs_config *cfg, struct catalog *cat,
		  const struct indexer_ops *ops, void *arg, int rescan_seconds,
		  struct indexer **out);

/* Stops the thread (finishing the file in hand) and frees everything. */
void indexer_stop(struct indexer *ix);

/* Blocks until the first full scan has finished (or @timeout_ms passes: -ETIMEDOUT). */
int indexer_wait_scan(struct indexer *ix, int timeout_ms);

/*
 * Asks for (category @cat_idx, @path) to be looked at now, skipping the quiet period: used
 * when a file written through the mount is closed. Asynchronous; returns at once.
 */
void indexer_publish_now(struct indexer *ix, size_t cat_idx, const char *path);

/* Asks for a full rescan now. Asynchronous. */
void indexer_rescan(struct indexer *ix);

/*
 * Records that @old_path was renamed to @new_path (a file or, with @is_dir, a directory tree)
 * through the mount: the entries move without rehashing, each with a new seq.
 * Synchronous; returns 0 or -errno.
 */
int indexer_renamed(struct indexer *ix, size_t cat_idx, const char *old_path,
		    const char *new_path, bool is_dir);

/* Records that @path (a file) was unlinked through the mount. Synchronous. */
int indexer_removed(struct indexer *ix, size_t cat_idx, const char *path);

/* A snapshot of the counters. */
void indexer_get_stats(struct indexer *ix, struct indexer_stats *st);

#endif
