/*
 * autosync — keeps this node ahead of its readers, and other nodes' data safe.
 *
 * A thread ("meshfs-autosync") makes a pass over the catalog every auto_sync.interval_seconds,
 * soon after a peer's manifest brought changes (autosync_kick), and every two seconds on an
 * ephemeral node. A pass:
 *   1. lists every version this node has completed and verified as a replica in its own
 *      manifest (catalog_publish_replica), so other nodes count it among the sources;
 *   2. fetches ahead, at the strategy's priorities (router.h): what this node's role wants
 *      (training: training data, games and the newest models; selfplay: the newest models;
 *      storage: everything), the newest models of a broadcast host (every node, role or not),
 *      and the files of ephemeral hosts that rendezvous hashing gives to this node to keep
 *      (pinned in the cache). Only with auto_sync.enabled, and never on an excluded node;
 *   3. withdraws replica entries whose copy is gone or whose producer moved on;
 *   4. counts this node's own files that have fewer copies elsewhere than replication_target
 *      (unreplicated bytes, shown by health and status); an ephemeral node then announces its
 *      manifest again so its replica holders pull at once.
 * Fetching goes through the fetcher (sync/fetch.c) at low, normal or high priority: a reader
 * always comes first.
 *
 * autosync_flush() is the SIGTERM path of an ephemeral node: it waits, within
 * auto_sync.shutdown_flush_seconds, until every own file has its copies elsewhere.
 *
 * Locking: a->lock protects the queue of completed versions, the kick flag and the status; no
 * lock of ours is held across catalog, namespace, cache or fetch calls.
 */
#ifndef MESHFS_AUTOSYNC_H
#define MESHFS_AUTOSYNC_H

#include <stdbool.h>
#include <stdint.h>

#include "sync/config.h"
#include "sync/hash.h"

struct autosync;
struct daemon;

struct autosync_status {
	enum cfg_strategy strategy;	/* in effect (auto resolved) */
	uint64_t unreplicated_bytes;	/* own data with fewer copies elsewhere than the target */
	uint64_t unreplicated_files;
	uint64_t own_files;		/* this node's own files and bytes, as the pass saw them */
	uint64_t own_bytes;
	uint64_t replicas;		/* other hosts' versions this node lists as held */
	uint64_t queued;		/* fetches asked for by the last pass */
	int64_t last_pass;		/* unix seconds; 0 = none yet */
	bool counted;			/* the unreplicated figures come from a pass */
};

/* Starts the thread for daemon @d (its catalog, namespace, cache, fetch and peers running).
 * Returns 0 and *out, or -errno. */
int autosync_start(struct daemon *d, struct autosync **out);
/* Stops the thread and frees @a (NULL is fine). */
void autosync_stop(struct autosync *a);

/* Some peer's manifest brought changes: a pass soon (at most one per two seconds). */
void autosync_kick(struct autosync *a);

/* The fetcher's completion hook (fetch_set_complete_hook): lists the version as a replica. */
void autosync_fetch_complete(void *arg, const char *category, const char *path,
			     const struct hash128 *hash);

/* A snapshot of the figures above. @a may be NULL (nothing counted yet). */
void autosync_get_status(struct autosync *a, const struct mfs_config *cfg,
			 struct autosync_status *out);

/*
 * For an ephemeral node: announces its manifest and waits until none of its own data is
 * unreplicated, at most @seconds. Returns 0 when all is replicated (or the node is not
 * ephemeral), -ETIMEDOUT otherwise (logged with what is left).
 */
int autosync_flush(struct autosync *a, int seconds);

#endif
