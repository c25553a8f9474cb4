/*
 * fetch — reading data that lives on other hosts: the requested range first, verified, at top
 * priority, while the reader waits only for what it asked for.
 *
 * A remote version is fetched in 4 MiB chunks (HASH_CHUNK_SIZE) with HTTP range requests to the
 * hosts that hold it (docs/protocol.md), on one thread ("meshfs-fetch") driving a libcurl multi
 * handle. Every chunk is checked against the version's chunk hashes before it is written into
 * the cache and before any reader sees a byte of it; a source that serves a bad chunk, fails,
 * or stalls is dropped for that version and the chunk is asked of another. Sources are chosen
 * by the expected time to finish (bytes in flight to them over their measured throughput), so
 * a version held by several hosts is fetched from all of them at once.
 *
 * A read that needs missing chunks is parked: fetch_read() returns -EINPROGRESS and its
 * callback runs on the fetch thread when the range is present (or has failed, or its deadline,
 * auto_sync.read_deadline_seconds, has passed). Readers of the same chunk share one transfer.
 * Sequential readers get the next chunks ahead of time; after the first read the rest of the
 * version completes in the background at low priority, and the whole-file hash is checked at
 * the end (cache_file_finish).
 *
 * Bandwidth: transfers nobody is waiting for (prefetch, meshfs sync, AutoSync, background
 * completion) are held to auto_sync.bandwidth_limit_mbps all together and to each host's limit
 * (the first host_bandwidth_overrides pattern that matches, else its bandwidth_mbps) by token
 * buckets (sync/bucket.h): such a transfer is paused while a bucket is in debt and resumed as it
 * refills. Transfers for waiting readers take from the same buckets but are never paused, so
 * reads pre-empt background work; and no background chunk starts while a reader waits.
 *
 * Memory is bounded: at most FETCH_MAX_XFERS transfers, each with one chunk buffer.
 * Locking: f->lock protects the table of versions, their chunk states and waiters; it is never
 * held across curl calls that do I/O, cache writes, or callbacks.
 */
#ifndef MESHFS_FETCH_H
#define MESHFS_FETCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sync/cache.h"
#include "sync/config.h"
#include "sync/namespace.h"
#include "sync/peers.h"

struct fetch;
struct fetch_file;

enum fetch_priority {
	FETCH_PRIO_NONE = 0,
	FETCH_PRIO_BACKGROUND = 1,
	FETCH_PRIO_LOW = 1,
	FETCH_PRIO_NORMAL = 2,
	FETCH_PRIO_HIGH = 3,
	FETCH_PRIO_CRITICAL = 4,
	FETCH_PRIO_AHEAD = 5,	/* read-ahead of a sequential reader */
	FETCH_PRIO_READ = 6,	/* a reader is waiting */
};

/* Called once per parked read: @err is 0 and the @len bytes at @off are in @buf (verified
 * blocks answered before their chunk is here; @buf is valid during the call only) or, when @buf
 * is NULL, can be read from @fd at @off; or @err is -errno (-ETIMEDOUT past the deadline, -EIO
 * when no source is left). */
typedef void (*fetch_done_fn)(void *cookie, int err, int fd, const void *buf, uint64_t off,
			      size_t len);

/* Called on the fetch thread, no lock held, when version @hash of (category, path) is complete
 * in the cache and its whole-file hash verified. */
typedef void (*fetch_complete_fn)(void *arg, const char *category, const char *path,
				  const struct hash128 *hash);

/* Sets the hook called when a version completes (before any fetch is asked for). */
void fetch_set_complete_hook(struct fetch *f, fetch_complete_fn fn, void *arg);

/* Starts the fetch thread. @peers may be NULL (no sources: every fetch fails). 0 or -errno. */
int fetch_start(const struct mfs_config *cfg, struct cache *cache, struct peers *peers,
		struct fetch **out);
/* Fails every parked read with -ESHUTDOWN, stops the thread, frees everything. */
void fetch_stop(struct fetch *f);

/* A referenced handle on remote version @r, shared by every reader of it. 0 or -errno. */
int fetch_open(struct fetch *f, const struct ns_remote *r, struct fetch_file **out);
void fetch_close(struct fetch_file *ff);

/*
 * Asks for [@off, @off+@len) (clipped to the size). When it is all here already, returns 0 and
 * the fd to read it from in *fd (-1 at or past the end of a version with nothing cached: the
 * answer is empty). Otherwise returns -EINPROGRESS and @done is called later, once,
 * from the fetch thread. Other -errno: nothing was parked.
 */
int fetch_read(struct fetch_file *ff, uint64_t off, size_t len, fetch_done_fn done,
	       void *cookie, int *fd);

/* Queues the whole of version @r at @prio (prefetch xattr, meshfs sync). 0 or -errno. */
int fetch_prefetch(struct fetch *f, const struct ns_remote *r, enum fetch_priority prio);

/* fetch_prefetch() that asks the hosts in @avoid (bit per host index) only when no other
 * source is left: a broadcast receiver spares the producer's upload (sync/autosync.c). */
int fetch_prefetch_avoiding(struct fetch *f, const struct ns_remote *r,
			    enum fetch_priority prio, uint64_t avoid);

/* Versions with data still to fetch (wanted or in flight): the queue of status and health.
 * @f may be NULL (0). */
size_t fetch_queue_len(struct fetch *f);

/* True while version @hash has transfers queued or under way. */
bool fetch_busy(struct fetch *f, const struct hash128 *hash);

/* The last error met fetching version @hash into @buf ("" if none); false if unknown. */
bool fetch_last_error(struct fetch *f, const struct hash128 *hash, char *buf, size_t size);

#endif
