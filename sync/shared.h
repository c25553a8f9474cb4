/*
 * shared — is the shared storage that this node's categories live on really there?
 *
 * A category whose directory here lies under one of this host's `shared_storage` paths is
 * served straight through (passthrough) and never synced with the hosts that share it. That
 * is only right while the directory is the shared mount and answers. For each such category
 * this module writes a probe file, <category dir>/.meshfs-probe/<node> ("meshfs-probe 1",
 * the node, a random nonce, the unix time): to <node>.new.writing first, fsync, rename, then
 * reads it back. It also reads the probe files of the hosts that the config says share that
 * storage.
 *
 * What "healthy" means (docs/architecture.md, "Shared storage"):
 *   - the category dir exists, is a directory and can be listed;
 *   - the probe was written, fsync'd, renamed and read back identical, all within the
 *     deadline (5 s; "no answer" counts as unhealthy: a hung NFS mount);
 *   - and, when some host that shares it per config has been up for three intervals, at
 *     least one such host's probe changed here within the last three intervals. If every one
 *     of them is up and none of their probes is seen moving, this directory is not the
 *     storage they write to (an empty local mountpoint, a stale mount), or theirs is not.
 * A host whose probe is not seen moving while it is up is "contradicted": the two are not
 * treated as sharing the storage, whatever the config says (shared_pair_ok, used by the
 * router), so replicas flow between them again.
 *
 * What follows from the state (applied to the namespace with ns_set_category_mode at once,
 * at start before anything is served and whenever it changes):
 *   healthy                       -> NS_CAT_PASSTHROUGH
 *   unhealthy, the dir readable   -> NS_CAT_LOCAL (a normal category: fetched ahead, synced)
 *   unhealthy, not readable/hung  -> NS_CAT_UNREADABLE (normal, and this node's own copies are
 *                                    shown only where no other host holds those bytes)
 *
 * The probe files stay out of the catalog and the namespace: `<node>.new.writing` ends in
 * `.writing`, and a permanent `<node>.writing` sidecar keeps the indexer from publishing
 * `<node>`; the namespace never shows SHARED_PROBE_DIR at a category root.
 *
 * Threads: "meshfs-shared" checks every interval (10 s); each probe's I/O runs in its own
 * short-lived detached thread ("meshfs-probe") that owns a reference to its job, so a probe
 * stuck in the kernel is left behind (and no other is started for that category until it
 * returns) instead of holding up the checker or the daemon's stop.
 *
 * The daemon holds the checker (struct daemon.shared) and hands it to the router's callers.
 * Locks: sh->lock, then a job's lock, each taken only for copies; none is held across I/O or a
 * call into another module.
 */
#ifndef MESHFS_SHARED_H
#define MESHFS_SHARED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sync/config.h"

/* The directory of probe files at the root of a shared category dir. */
#define SHARED_PROBE_DIR ".meshfs-probe"

#define SHARED_INTERVAL_MS 10000
#define SHARED_DEADLINE_MS 5000

struct ns;
struct peers;

struct shared;

struct shared_opts {
	int interval_ms;	/* between checks; 0 = SHARED_INTERVAL_MS */
	int deadline_ms;	/* for one probe's answer; 0 = SHARED_DEADLINE_MS */
	/* Whether host @host_idx is up now. NULL: asked of @peers (peers_status: reached, up or
	 * degraded, circuit closed); no @peers either: never (tests). */
	bool (*peer_up)(void *arg, size_t host_idx);
	void *peer_up_arg;
};

/* One shared category as health and status show it. */
struct shared_view {
	size_t cat_idx;
	char path[4096];	/* the category dir on this node */
	bool healthy;
	bool readable;		/* unhealthy: whether this node's copies can still be read */
	int64_t checked_s;	/* seconds since the state was last decided */
	char detail[512];
};

/*
 * Starts checking the shared categories of cfg->self. Probes each once now (at most the
 * deadline), sets the namespace's mode of each (@ns may be NULL) and starts the "meshfs-shared"
 * thread; the checker in *out. A node without shared categories gets none (returns 0, *out
 * NULL). @peers (may be NULL) tells which hosts are up; @opts may be NULL. Returns 0 or
 * -errno. @cfg, @ns and @peers must outlive shared_stop(). No lock held on return.
 */
int shared_start(const struct mfs_config *cfg, struct ns *ns, struct peers *peers,
		 const struct shared_opts *opts, struct shared **out);

/*
 * Stops and frees checker @sh (NULL: nothing). Waits for the thread, never for a
 * probe stuck in I/O (that one frees its job when it returns). Call it before the namespace
 * and the peers it was given are gone.
 */
void shared_stop(struct shared *sh);

/*
 * The shared categories of checker @sh, in category order: a new array in *out (free()), its
 * length in *n; 0 entries when @sh is NULL. Returns 0 or -ENOMEM.
 */
int shared_list(struct shared *sh, struct shared_view **out, size_t *n);

/*
 * Whether this node (the checker's cfg->self) may treat @other as seeing category @cat_idx's storage with
 * it, as far as this node can tell: false when this node's storage of that category is
 * unhealthy, or @other is up and its probe is not seen here; true otherwise, and whenever
 * nothing is checked for that category (@sh NULL, not on shared storage here). The config
 * must already say they share (router.c asks only then).
 */
bool shared_pair_ok(struct shared *sh, const struct cfg_host *other, size_t cat_idx);

#endif
