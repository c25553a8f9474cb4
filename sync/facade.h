/*
 * facade — `meshfs sync`: bring what the user asked for here, and say when it is.
 *
 * A request names a category (or all), optional board type / player count filters on file
 * base names (`*_<board>_<n>p*`), a priority and optionally one source host. The daemon walks
 * the namespace once: this node's own files and passthrough categories count as local and
 * verified, as do other hosts' versions whose cached copy is complete; every other matching
 * file (remote, partial, stale) becomes an item of a sync *job*. A worker thread
 * ("meshfs-sync") feeds each job's items to the fetcher (the user.meshfs.prefetch path) a
 * window at a time and watches them until each is cached and verified or has failed; the
 * client polls the job for its progress. Protocol (docs/architecture.md, "Control socket"):
 *
 *   {"cmd":"sync", "what", "priority", "board_type", "num_players", "host", "no_wait"}
 *     -> {"job", "files", "bytes", "verified_files", "verified_bytes", "queued_files",
 *         "queued_bytes", "fetched_bytes", "failures", "failed": [{"path","host","error"}],
 *         "finished", "deadline_s"}           (job 0 and finished: nothing to wait for)
 *   {"cmd":"sync_progress", "job"} -> the same keys, current; a finished job is forgotten once
 *         it has been reported finished
 *   bad requests -> {"error": "...", "usage": true}
 *
 * Bounds: at most FACADE_MAX_JOBS unfinished jobs and FACADE_MAX_FILES tracked files in all
 * (about 48 bytes each); at most FACADE_WINDOW files of a job in the fetcher at once; at most
 * 100 failures listed per job (all are counted). A job's files fail when none of them gets a
 * byte for twice auto_sync.read_deadline_seconds, and the job ends at the latest after 300 s
 * plus one second per MiB it had to fetch.
 */
#ifndef MESHFS_FACADE_H
#define MESHFS_FACADE_H

#include <jansson.h>
#include <stdbool.h>

struct daemon;
struct facade;

/* Starts the "meshfs-sync" worker for @d (which must outlive it). 0 and *out, or -errno. */
int facade_start(struct daemon *d, struct facade **out);

/*
 * Stops the worker (joins it; idempotent). Jobs stay readable but are not advanced any more,
 * and new syncs are refused. The worker calls the fetcher, so this must run before fetch_stop:
 * daemon_stop_fetch() is where it belongs (via control_stop_sync). @fc may be NULL.
 */
void facade_quiesce(struct facade *fc);

/*
 * Stops the worker if still running and frees every job (their files stay queued in the
 * fetcher). Must be called while d->ns and d->cache still exist, and when no request can
 * reach the facade any more. @fc may be NULL.
 */
void facade_stop(struct facade *fc);

/*
 * The daemon side of `meshfs sync`: answers @req as described above (a new object the caller
 * owns; NULL only when memory runs out). Walks the namespace on the calling thread with no
 * lock of ours held across namespace, cache or catalog calls.
 */
json_t *facade_sync(struct facade *fc, json_t *req);

/* {"cmd":"sync_progress","job":N}: the job's progress (a new object), or {"error"} for an
 * unknown job. Takes only the facade's lock, never across another module's call. */
json_t *facade_progress(struct facade *fc, json_t *req);

/* True when base name @name matches the board/players filter (NULL/0 = any). */
bool facade_name_matches(const char *name, const char *board_type, int num_players);

#endif
