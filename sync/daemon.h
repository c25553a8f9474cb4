/*
 * daemon — the one context of a running meshfs node, and its start and stop.
 *
 * struct daemon owns every subsystem: the config, the state-dir lock, the catalog, the
 * namespace, the indexer, the data server and the control socket. fs/ hands it to the FUSE
 * session as userdata; each subsystem receives only a pointer to its own part. Start order is
 * lock -> catalog -> namespace (loaded from the catalog) -> indexer -> data server -> control
 * socket; stop is the reverse.
 *
 * Full order: lock -> catalog -> cache -> namespace -> indexer -> peers -> fetch -> autosync
 * -> data server -> control socket. An ephemeral node's stop first waits (autosync_flush) for
 * its own data to have its copies elsewhere.
 */
#ifndef MESHFS_DAEMON_H
#define MESHFS_DAEMON_H

#include <stdbool.h>
#include <stdint.h>

#include "sync/catalog.h"
#include "sync/config.h"
#include "sync/indexer.h"
#include "sync/namespace.h"

struct autosync;
struct cache;
struct control;
struct dataserver;
struct fetch;
struct peers;
struct shared;

struct daemon {
	const struct mfs_config *cfg;	/* owned by the caller, outlives the daemon */
	int lock_fd;			/* flock on <state_dir>/lock */
	struct catalog *catalog;
	struct ns *ns;
	struct indexer *indexer;
	struct cache *cache;		/* copies of other hosts' versions */
	struct peers *peers;		/* NULL until started (and in tests) */
	struct fetch *fetch;
	struct autosync *autosync;	/* atomic: the peers thread reads it (see daemon.c) */
	struct shared *shared;		/* the shared-storage checker; NULL if none */
	struct dataserver *server;
	struct control *control;
	int64_t started_at;		/* unix seconds */
	/* Set by fs/ so the namespace's invalidations reach the kernel. */
	void (*invalidate)(void *arg, uint64_t parent, const char *name, uint64_t ino);
	void *invalidate_arg;
};

/*
 * Prepares the state dir (<state_dir>, created 0755 if missing; -EACCES/-EROFS with a message
 * when it is not writable) and takes its lock: a second daemon on the same state dir gets
 * -EBUSY and a message naming the running daemon's pid. On failure writes one line to @err.
 */
int daemon_lock_state_dir(const struct mfs_config *cfg, int *lock_fd, char *err, size_t errlen);

/*
 * Starts every subsystem for @cfg on the already locked state dir. Returns 0 and *out, or
 * -errno with one line in @err (e.g. the port in use). Nothing is left running on failure.
 * @serve_only skips nothing today; it is for `meshfs serve`.
 */
int daemon_start(const struct mfs_config *cfg, int lock_fd, struct daemon **out, char *err,
		 size_t errlen);

/* Stops fetching: every parked read is answered (with -ESHUTDOWN). The FUSE side calls this
 * while its session still exists, before daemon_stop(). */
void daemon_stop_fetch(struct daemon *d);

/* Stops every subsystem in reverse order and frees the daemon (the lock is released last). */
void daemon_stop(struct daemon *d);

#endif
