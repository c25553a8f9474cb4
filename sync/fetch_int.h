/*
 * fetch_int — what the fetcher's own source files share: its limits, the per-version and
 * per-transfer state, and the helpers fetch_probe.c uses. Only sync/fetch*.c include this;
 * every other module uses fetch.h. The locking rules of fetch.c's header hold throughout.
 */
#ifndef MESHFS_FETCH_INT_H
#define MESHFS_FETCH_INT_H

#include <curl/curl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sync/bucket.h"
#include "sync/fetch.h"
#include "sync/hash.h"

#define FETCH_MAX_XFERS 8		/* transfers at once, each holding one chunk buffer */
#define FETCH_MAX_BACKGROUND 2		/* of which background completion may take */
#define FETCH_MAX_PER_HOST 6		/* chunk transfers from one host at once */
#define FETCH_AHEAD_CHUNKS 6		/* read-ahead for sequential readers */
#define FETCH_POLL_MS 100
#define FETCH_CONNECT_TIMEOUT_MS 2000
#define FETCH_STALL_SECONDS 3		/* no progress this long: the source is stalled */
#define FETCH_DEFAULT_BPS (50.0 * 1024 * 1024) /* guess for a source never measured */
#define FETCH_EPHEMERAL_PENALTY 1.5	/* ephemeral sources: their expected time counts more */
#define FETCH_MAX_CHUNK_LIST (1u << 20)
#define FETCH_RECV_BUFFER (512 * 1024)
/* Probes and chunk lists: a 64 KiB block and its response header in one read, and still below
 * malloc's mmap threshold (128 KiB). */
#define FETCH_SMALL_RECV_BUFFER (96 * 1024)
#define FETCH_STAGE (1024 * 1024)	/* bytes of a chunk gathered per write to the cache */
#define FETCH_MAX_PROBES 4		/* probes in flight per version */
#define FETCH_PROBE_MAX (1024 * 1024)	/* reads longer than this wait for their chunks */
#define FETCH_QUIET_NS (2 * 1000000LL)	/* after a probe answered a read: see fetch_quiet */
#define FETCH_QUIET_GAP_NS (8 * 1000000LL) /* at least this between two quiet times */
#define FETCH_PROBE_HEAD_NS (10 * 1000000LL) /* see next_to_create_locked */

/* xfer.chunk of the transfers that are not a chunk */
#define XFER_LIST SIZE_MAX		/* the chunk hash list */
#define XFER_PROBE (SIZE_MAX - 1)	/* a few blocks for a reader (fetch_probe.c) */

enum chunk_state {
	CH_ABSENT,
	CH_INFLIGHT,
	CH_PRESENT,
};

struct waiter {
	struct waiter *next;
	uint64_t off;
	uint64_t len;
	int64_t deadline_ns;
	bool probe;			/* wants a probe (not yet started or joined) */
	fetch_done_fn done;
	void *cookie;
};

struct probe_range {
	uint64_t off;
	uint64_t len;
};

struct fetch_file {
	struct fetch *f;
	struct fetch_file *next;	/* in f->files */
	int refs;			/* handles + the background completion; under f->lock */
	bool background;		/* holds a ref until complete or failed */
	struct hash128 hash;
	char *category;
	char *path;
	uint64_t size;
	size_t nchunks;
	/*
	 * The cache file: found at open when the cache has the version already, else made by
	 * the fetch thread before the first chunk is asked for (a probe needs none), so an open
	 * costs no file creation and no catalog write. Set once, under f->lock, and read
	 * without it by fetch_read() (file_cf() in fetch.c).
	 */
	struct cache_file *cf;
	/* Under f->lock: */
	uint8_t *state;			/* enum chunk_state per chunk */
	uint8_t *want;			/* enum fetch_priority per chunk */
	bool have_list;			/* chunk hashes known */
	bool list_inflight;
	bool finishing;			/* cache_file_finish under way or done */
	bool complete;
	uint64_t no_probe;		/* sources that sent no block hashes: not probed */
	struct probe_range probes[FETCH_MAX_PROBES];	/* in flight */
	int n_probes;
	int64_t first_probe_ns;		/* mono_ns of its first probe while it had no cache
					 * file; 0 = none (see next_to_create_locked) */
	uint64_t sources;		/* hosts that hold it */
	uint64_t dropped;		/* sources that failed it */
	uint64_t avoid;			/* sources used only when no other is left */
	int inflight;
	struct waiter *waiters;
	uint64_t last_read_end;
	char last_error[256];
};

struct xfer {
	struct xfer *prev, *next;	/* in f->xfers */
	struct fetch_file *ff;
	CURL *easy;
	struct curl_slist *headers;
	int host;
	size_t chunk;			/* or XFER_LIST, XFER_PROBE */
	uint64_t probe_off;		/* XFER_PROBE: the block-aligned range asked for */
	uint64_t probe_len;
	char *blocks;			/* XFER_PROBE: the X-Meshfs-Blocks header's value */
	/* The chunk list is collected in buf; a chunk goes straight into the cache file at its
	 * place as it arrives (hashed on the way) and is marked present only once verified. */
	char *buf;
	size_t len;			/* bytes received */
	size_t cap;			/* bytes expected (chunk) or room in buf (list) */
	int fd;				/* the cache file (chunks) */
	uint64_t base;			/* offset of the chunk in the file */
	char *stage;			/* received bytes not yet written (libcurl hands out
					 * 16 KiB at a time; a write per piece costs more) */
	size_t staged;
	size_t flushed;			/* bytes of the chunk already written */
	struct hash_stream *hs;
	int write_err;			/* -errno of a failed write into the cache */
	uint64_t reserved;		/* cache bytes reserved for it */
	int64_t started_ns;
	bool background;
	bool limited;			/* no reader waits for it: held to the buckets */
	bool paused;			/* by the write callback, for a bucket in debt */
	char error[CURL_ERROR_SIZE];
};

struct fetch {
	const struct mfs_config *cfg;
	struct cache *cache;
	struct peers *peers;
	CURLM *multi;
	pthread_t thread;
	bool thread_started;

	pthread_mutex_t lock;
	/* Under lock: */
	struct fetch_file *files;
	bool stop;

	/* Fetch thread only (and fetch_stop after the thread ended): */
	struct xfer *xfers;
	int active;
	int active_background;
	uint64_t host_inflight[64];	/* bytes requested and not yet received, per host */
	int host_chunks[64];		/* chunk transfers running, per host */
	struct bucket all_bw;		/* auto_sync.bandwidth_limit_mbps */
	struct bucket host_bw[64];	/* per host */
	int n_paused;
	int64_t quiet_until;		/* mono_ns: background work waits (fetch_quiet) */

	/* Under lock (set once, early): */
	fetch_complete_fn complete;
	void *complete_arg;
};

/* A finished read to report once the lock is dropped. */
struct completion {
	struct completion *next;
	fetch_done_fn done;
	void *cookie;
	int err;
	int fd;
	void *buf;			/* owned; NULL: the bytes are in fd */
	uint64_t off;
	size_t len;
};

/*
 * Queues on @done the answer to parked read @w (taken off its list by the caller): @err, or its
 * bytes in @fd, or a copy of its w->len bytes at @buf. Frees @w and returns true; returns false
 * (nothing queued, @w untouched) when out of memory. f->lock held.
 */
bool fetch_answer_waiter(struct completion **done, struct waiter *w, int err, int fd,
			 const void *buf);
/* Bytes of chunk @idx of @ff. */
size_t fetch_chunk_len(const struct fetch_file *ff, size_t idx);
/* Whether no chunk that [@off, @off + @len) touches is present or on its way. Lock held. */
bool fetch_chunks_absent(const struct fetch_file *ff, uint64_t off, uint64_t len);
/* Records the last error of @ff (lock held), for user.meshfs.last_error. */
void fetch_file_error(struct fetch_file *ff, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* The source to ask (see fetch.c), or -1. Lock held. */
int fetch_pick_source(struct fetch *f, struct fetch_file *ff, uint64_t exclude, uint64_t bytes,
		      bool *busy);
/* Starts a transfer of @ff (a chunk, XFER_LIST or XFER_PROBE with @probe). Lock held; 0 or
 * -errno (nothing started). */
int fetch_xfer_start(struct fetch *f, struct fetch_file *ff, int host, size_t chunk,
		     const struct probe_range *probe, bool background, bool limited);

/* fetch_probe.c: libcurl's header callback of a probe (keeps X-Meshfs-Blocks). */
size_t fetch_probe_header(char *data, size_t size, size_t nmemb, void *arg);
/* Starts a probe for each parked read that wants one and has none covering it; whether it
 * started any. Lock held. */
bool fetch_start_probes_locked(struct fetch *f);
/* Handles a finished probe (see fetch_probe.c). Called without the lock; takes it. */
void fetch_probe_done(struct fetch *f, struct xfer *x, CURLcode rc, struct completion **done);

#endif
