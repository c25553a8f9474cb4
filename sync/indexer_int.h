/*
 * indexer_int — what the indexer's own source files share: struct indexer, the publish batch,
 * and the helpers one file defines and the other calls. indexer.c has the thread, the queue,
 * the pending checks, inotify and publishing; indexer_walk.c looks at paths, walks trees and
 * runs the full scan. Nothing outside sync/indexer*.c includes this; the rest of the daemon
 * uses indexer.h.
 *
 * Unless a comment says otherwise, a function here runs on the indexer thread only (it uses
 * the thread-owned fields of struct indexer without a lock) and is called without ix->lock
 * held: it may take that lock briefly for the stats, call the catalog and run the owner's
 * callbacks (ix->ops), so it must never be called with ix->lock held.
 */
#ifndef MESHFS_INDEXER_INT_H
#define MESHFS_INDEXER_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/inotify.h>
#include <sys/stat.h>

#include "sync/catalog.h"
#include "sync/config.h"
#include "sync/indexer.h"
#include "sync/pathset.h"

#define NS_PER_SEC 1000000000LL
#define NS_PER_MS 1000000LL
/* Hashed files published per catalog transaction, at most. */
#define PUBLISH_BATCH 128
/* Bytes of inotify events read at once. */
#define EVENT_BUF_SIZE 65536
#define WRITING_SUFFIX ".writing"
#define WRITING_LEN (sizeof(WRITING_SUFFIX) - 1)

enum job_kind {
	JOB_SCAN,
	JOB_CHECK,
	JOB_STOP,
};

struct job {
	struct job *next;
	enum job_kind kind;
	bool embedded;		/* the stop job lives in struct indexer: stopping never allocates */
	size_t cat;
	char *path;
};

/* A copy of the parts of a catalog entry the indexer decides on. */
struct entry_copy {
	bool deleted;
	bool replica;			/* another host's file this node holds a copy of */
	uint64_t size;
	int64_t mtime_ns;
	struct hash128 hash;
	uint64_t dev;
	uint64_t ino;
	int64_t ctime_ns;
};

/* A hashed file waiting in the publish batch: what the publication needs afterwards. */
struct pub_item {
	size_t cat;
	char *path;			/* owned; pubs[i].e.path points to it */
	struct hash128 *chunks;		/* owned; pubs[i].chunks points to it */
	struct hash128 *blocks;		/* owned; pubs[i].blocks points to it */
	struct entry_copy old;		/* the entry it replaces, for the stats */
	bool had_old;
};

struct pub_batch {
	struct cat_publish pubs[PUBLISH_BATCH];
	struct pub_item items[PUBLISH_BATCH];
	size_t n;
};

/* (category, path) pairs collected from a catalog walk, to act on after it returns. */
struct path_list {
	struct {
		size_t cat;
		char *path;
	} *items;
	size_t n;
	size_t cap;
};

struct indexer {
	const struct mfs_config *cfg;
	struct catalog *cat;
	struct indexer_ops ops;
	void *arg;
	int64_t quiet_ns;
	int64_t rescan_ns;
	size_t n_cats;
	char *catdir[CFG_MAX_CATEGORIES];	/* NULL: this node has no dir for it */
	int wake_fd;				/* eventfd: a job was queued */
	int ino_fd;				/* -1 when inotify is unavailable */
	pthread_t thread;
	bool thread_started;
	struct job stop_job;

	pthread_mutex_t lock;
	pthread_cond_t scan_cond;	/* signalled when a full scan finishes */
	/* protected by lock: */
	struct job *head, *tail;
	size_t n_jobs;
	bool scan_queued;
	bool first_scan_done;
	struct indexer_stats stats;

	/* owned by the indexer thread, no lock: */
	bool stopping;
	bool scan_wanted;
	bool scanning;
	bool in_service;
	bool pending_full_logged;
	bool watch_limit_logged;
	bool no_dir_logged[CFG_MAX_CATEGORIES];
	bool cat_missing[CFG_MAX_CATEGORIES];
	uint64_t gen;
	int64_t next_due;		/* mono ns; may be early, never late */
	int64_t next_rescan;		/* mono ns */
	int64_t last_service;		/* mono ns */
	uint64_t scan_unreadable;
	char scan_last_unreadable[512];
	struct pset pending;		/* paths to look at again */
	struct pset dirs;		/* directories known to exist */
	struct pset watches;		/* inotify wd -> (category, dir) */
	struct pset warned;		/* unreadable paths already logged in this scan */
	struct pub_batch batch;		/* hashed, not yet committed (see indexer.c's header) */
	char events[EVENT_BUF_SIZE] __attribute__((aligned(__alignof__(struct inotify_event))));
};

/* The name of category @ci (the config's string). Any thread. */
static inline const char *indexer_cat_name(const struct indexer *ix, size_t ci)
{
	return ix->cfg->categories[ci].name;
}

/* --- indexer.c ---------------------------------------------------------------------------- */

/* Whether @name ends in ".writing" (a sidecar, never published). Any thread. */
bool indexer_ends_with_writing(const char *name);
/* "dir/name", or "name" when @dir is the category root "". A new string the caller frees;
 * NULL on ENOMEM. Any thread. */
char *indexer_rel_join(const char *dir, const char *name);
/* Frees the paths and the array of @l and zeroes it. Any thread. */
void indexer_path_list_free(struct path_list *l);
/*
 * Lists this node's live entries (not its replicas of other hosts' files) of category
 * @only_cat (SIZE_MAX: every configured one), below directory @under (NULL: all) into *out,
 * which the caller frees with indexer_path_list_free(). 0, or -errno with *out empty. Any
 * thread, ix->lock not held (one catalog walk; the catalog mutex is held during it).
 */
int indexer_collect_entries(struct indexer *ix, size_t only_cat, const char *under,
			    struct path_list *out);
/* Records that (@ci, @rel) could not be read (@err: errno): logged and counted once per path
 * per scan. Takes ix->lock for the stats when no scan is running. */
void indexer_note_unreadable(struct indexer *ix, size_t ci, const char *rel, bool is_dir,
			     int err);
/* Watches directory @full, known as (@ci, @rel), and records the wd in ix->watches. Returns
 * the wd, or -1 (no inotify, watch limit, gone, out of memory). */
int indexer_add_watch(struct indexer *ix, size_t ci, const char *rel, const char *full);
/* Stops watching dir (@ci, @rel) if @wd (may be -1) still stands for it. */
void indexer_drop_watch(struct indexer *ix, int wd, size_t ci, const char *rel);
/*
 * Called between files of long work, at most every SERVICE_NS: commits the publish batch, then
 * serves the queued jobs (a check job walks, re-entering the walk code) and inotify. From
 * inside such a job it only looks for a stop. Sets ix->stopping when a stop is queued.
 */
void indexer_service(struct indexer *ix);
/* Commits the publish batch (one transaction) and calls ops->published for each file. */
void indexer_flush_publishes(struct indexer *ix);
/* Commits the batch, then deletes this node's live entry (@ci, @rel) and calls ops->deleted;
 * nothing when there is none. Failures are logged. */
void indexer_drop_entry(struct indexer *ix, size_t ci, const char *rel);
/*
 * Decides about the regular file @full, known as (@ci, @rel) and lstat'ed as @st: unchanged
 * (nothing to do), held by a sidecar (@sidecar), not quiet yet (pended), or hashed into the
 * publish batch. @force skips the quiet period; @prev is the pending entry that led here, if
 * any (it may already be out of ix->pending).
 */
void indexer_check_file(struct indexer *ix, size_t ci, const char *rel, const char *full,
			const struct stat *st, bool sidecar, bool force, const struct pent *prev);

/* --- indexer_walk.c ----------------------------------------------------------------------- */

/*
 * Looks at (@ci, @rel) now: a file is checked (@force: without the quiet wait), a directory
 * walked, and what is gone is deleted, unless the category dir itself is missing. @prev as
 * for indexer_check_file(). Returns early once ix->stopping is set.
 */
void indexer_check_path(struct indexer *ix, size_t ci, const char *rel, bool force,
			const struct pent *prev);
/*
 * Walks every category, then settles what was not met; updates the stats (under ix->lock),
 * wakes indexer_wait_scan() waiters and sets the next rescan. Cut short by a stop.
 */
void indexer_full_scan(struct indexer *ix);

#endif
