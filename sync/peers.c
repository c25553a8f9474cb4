/*
 * peers — pulls the other hosts' manifests and keeps their health (see peers.h).
 *
 * How it works:
 * - One thread, "meshfs-peers", owns one curl easy handle and does every request, one at a
 *   time. Its job queue is a due time per peer plus one announce slot, under p->lock: the thread
 *   takes the announce first, then the peer whose due time is earliest once it has come, and
 *   otherwise sleeps on p->wake until the next due time. peers_notify() moves a peer's due time
 *   to "now" (never later than it was, so notifications cannot starve the others) and wakes the
 *   thread; a notification that arrives while that peer is being pulled makes it due again at
 *   once, because the running pull may have started before the peer's change.
 * - A pull is GET <base>/v1/manifest?since=<position> (docs/protocol.md). The body is parsed as
 *   it arrives: the write callback cuts it into lines (a line that arrives whole is parsed in
 *   curl's buffer; only a line split across writes is copied into a fixed 64 KiB buffer), each
 *   line is one json_loadb(). Valid entries collect in a batch of at most PULL_BATCH; a full
 *   batch (and the rest at the end) is one catalog_apply_remote() transaction that also moves
 *   the host's position, then each entry is reported through struct peers_ops. So memory does
 *   not grow with the manifest, and a cut-short response keeps what it applied.
 * - Position: a bad entry is skipped for good (logged), so the position moves past it with the
 *   next batch; entries with a seq above the header's (published while the response was being
 *   produced) are left for the next pull, and a complete response moves the position to the
 *   header's seq. A header seq below our position means the host has a new catalog: its entries
 *   are forgotten (catalog_reset_host, ops->host_reset) and it is pulled again from 0.
 * - Health: a pull that fails (no connection, timeout, HTTP error, bad header, no trailer,
 *   catalog error) counts one error; one failure makes the host DEGRADED, PEER_DOWN_AFTER in a
 *   row DOWN, a complete pull UP. A down host is retried with a doubling delay capped at
 *   PEER_MAX_BACKOFF_MS (a notification from it still pulls it at once). Connect and low-speed
 *   timeouts bound what a dead or stalled host costs; the progress callback aborts a transfer as
 *   soon as peers_stop() is called.
 * - Circuit breaker (sync/circuit.c), one per host for its HTTP transport, on top of that:
 *   every pull, announcement and reported fetch is a success or a failure for it. A failure is
 *   the host's or the network's (no connection, timeout, HTTP error, a bad or cut-short
 *   response, corrupt data); a pull that failed on this node's side after the host answered
 *   (catalog, memory) counts as a success, and one that failed before asking anything (the
 *   catalog could not say the position) gives the probe back (circuit_abandon). Once
 *   circuit_failure_threshold failures in a row open it, the host's due time is the breaker's
 *   retry time and nothing at all is sent to it until then: the thread asks circuit_allow()
 *   before every pull, and announcements skip it. The half-open probe is the manifest pull
 *   itself rather than a GET /v1/health: it is one request either way, it proves the endpoint
 *   we need works (a health answer from a host whose manifest fails would close the circuit
 *   for nothing), and its success brings this node up to date at once. Only the peers thread
 *   probes; peers_allow() (the fetcher's question) is true only when closed. While open, a
 *   notification from the host expedites the probe (circuit_expedite: at most once per pull
 *   interval) — a host that starts says hello (daemon.c announces its seq once its data server
 *   listens), so it is seen again within seconds, not after a backed-off wait of up to 16 ×
 *   circuit_recovery_seconds.
 * - Announcements go to hosts that are up or not contacted yet: one whose last pull failed
 *   learns our news from its own pulls, and failed announcements in a burst of publications
 *   would open its circuit in milliseconds (five refused connects during a first scan did).
 * - No separate health check: every active peer is already asked for its manifest every
 *   interval (an unchanged host costs one small request), which is the health check — a
 *   periodic GET /v1/health next to it would double the requests and tell nothing more.
 *
 * Locking: p->lock protects the per-peer status, due times, the announce slot and the stop flag
 * (also read without the lock, atomically, by the curl callbacks). It is never held across a
 * request, a catalog call or a peers_ops callback. Each peer's circuit has its own mutex, a
 * leaf: it may be taken with p->lock held (p->lock, then the circuit's), never the reverse;
 * peers_allow() takes only the circuit's.
 */
#include "sync/peers.h"

#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>

#include "sync/log.h"
#include "sync/util.h"

#define NS_PER_MS 1000000LL
#define PEER_DEFAULT_INTERVAL_MS 2000
#define PEER_CONNECT_TIMEOUT_MS 2000L
#define PEER_LOW_SPEED_TIME_S 5L	/* less than 1 byte/s for this long: stalled */
#define PEER_MANIFEST_TIMEOUT_MS (300 * 1000L)
#define PEER_NOTIFY_CONNECT_MS 1000L
#define PEER_NOTIFY_TIMEOUT_MS 2000L
#define PEER_DOWN_AFTER 3		/* consecutive failures */
#define PEER_MAX_BACKOFF_MS 30000
#define PEER_EWMA_ALPHA 0.3
#define PEER_MIN_SAMPLE_BYTES (64 * 1024)	/* smaller transfers measure latency, not speed */
#define PEER_SEEN_REFRESH_S 10	/* an unchanged host's last_seen is written at most this often */
/* A probe not reported within this is presumed lost. Only this thread probes and it always
 * reports, so this is a safety net: longer than any pull may take. */
#define PEER_PROBE_TIMEOUT_MS (PEER_MANIFEST_TIMEOUT_MS + 60 * 1000L)

#define PULL_MAX_LINE (64 * 1024)
#define PULL_BATCH 1000
#define PULL_MAX_PATH 4096
#define PULL_MAX_ORIGIN 255
#define PULL_MAX_SIZE ((json_int_t)1 << 50)
#define PULL_WARN_BAD 10 /* bad entries logged as warnings per pull; the rest at debug */

struct peer {
	size_t host_idx;		/* into cfg->hosts */
	const char *name;		/* the config's string */
	char *base_url;			/* "http://addr:port" */
	const char *hostport;		/* base_url without "http://" */
	struct circuit *http;		/* the HTTP transport's breaker; its own (leaf) lock */
	/* protected by p->lock: */
	struct peer_status st;
	int64_t due;			/* CLOCK_MONOTONIC ns of the next pull */
	bool notified;			/* peers_notify() since the current pull began */
	bool attempted;			/* one pull has finished, for peers_wait_first_pull */
};

/* One manifest response being parsed; owned by the thread. */
struct pull {
	struct peers *p;
	struct peer *pe;
	int64_t since;			/* the position the request asked from */
	/* the line split across writes */
	char *line;			/* PULL_MAX_LINE bytes, allocated once */
	size_t line_len;
	bool discarding;		/* skipping the rest of an overlong line */
	/* what the stream said */
	bool header_seen, trailer_seen, reset;
	int64_t header_seq;
	int64_t last_seq; /* the last entry seq consumed (applied or skipped as bad) */
	size_t lines;			/* entry lines, good or bad */
	size_t applied, bad, after_trailer;
	/* the batch waiting for catalog_apply_remote; strings owned */
	struct cat_entry *batch;	/* PULL_BATCH */
	size_t *batch_cat;		/* the category index of each */
	size_t n_batch;
	/* the first failure, which ends the pull */
	int err;			/* 0 or -errno */
	char errmsg[256];
	bool lost; /* entries consumed but not kept: the position must not move */
};

struct peers {
	const struct mfs_config *cfg;
	struct catalog *cat;
	struct peers_ops ops;
	void *arg;
	int64_t interval_ns;
	unsigned circuit_threshold;	/* as configured, for the log */
	struct peer *peers;		/* array fixed at start */
	size_t n_peers;
	ssize_t *peer_of;		/* cfg->hosts index -> peers index, -1 if not pulled */

	pthread_t thread;
	bool thread_started;
	pthread_mutex_t lock;		/* taken alone */
	pthread_cond_t wake;		/* the thread: work queued, or stop */
	pthread_cond_t first_cond;	/* waiters of peers_wait_first_pull */
	/* protected by lock: */
	bool stopping;			/* also read atomically by the curl callbacks */
	bool announce_pending;
	int64_t announce_seq;
	size_t first_pending;		/* peers whose first pull has not finished */

	/* owned by the thread (made in peers_start, freed after the join): */
	CURL *curl;
	struct curl_slist *headers;	/* Authorization, Accept */
	struct curl_slist *post_headers; /* Authorization, Content-Type */
	char curl_err[CURL_ERROR_SIZE];
	struct pull pull;
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;

static void curl_init_once(void)
{
	curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static bool is_stopping(struct peers *p)
{
	return __atomic_load_n(&p->stopping, __ATOMIC_RELAXED);
}

/* ---- URLs ---- */

int peers_base_url(const struct mfs_config *cfg, size_t host_idx, char *buf, size_t size)
{
	const struct cfg_host *h;
	bool v6;
	int n, ret = -EINVAL;

	if (!cfg || host_idx >= cfg->n_hosts || !buf || !size)
		goto out;
	h = &cfg->hosts[host_idx];
	ret = -ENOENT;
	if (!h->address || !*h->address)
		goto out;
	/* A literal IPv6 address needs brackets in a URL (unless the config already has them). */
	v6 = strchr(h->address, ':') && h->address[0] != '[';
	n = snprintf(buf, size, "http://%s%s%s:%d", v6 ? "[" : "", h->address, v6 ? "]" : "",
		     h->data_server_port > 0 ? h->data_server_port : CFG_DEFAULT_PORT);
	ret = n < 0 || (size_t)n >= size ? -ENAMETOOLONG : 0;
out:
	return ret;
}

/* ---- health bookkeeping ---- */

static struct peer *peer_by_idx(struct peers *p, size_t host_idx)
{
	if (!p || host_idx >= p->cfg->n_hosts || p->peer_of[host_idx] < 0)
		return NULL;
	return &p->peers[p->peer_of[host_idx]];
}

/* The delay before the next pull after this one. Lock held. */
static int64_t next_delay_ns(struct peers *p, const struct peer *pe)
{
	int64_t delay = p->interval_ns, cap = (int64_t)PEER_MAX_BACKOFF_MS * NS_PER_MS;
	uint32_t f = pe->st.consecutive_failures;

	if (f < PEER_DOWN_AFTER)
		return delay;
	if (cap < p->interval_ns)
		cap = p->interval_ns;
	for (uint32_t i = PEER_DOWN_AFTER - 1; i < f && delay < cap; i++)
		delay *= 2;
	return delay < cap ? delay : cap;
}

/* What one request says about the host, for its circuit. */
enum verdict {
	V_NONE,		/* nothing reached the host: no verdict (a probe is given back) */
	V_OK,		/* the host answered */
	V_FAIL,		/* the host, or the network to it, failed */
};

/*
 * Feeds @v into @pe's circuit at @now. Returns +1 when that opened it (from closed, or a probe
 * failed), -1 when it closed it, else 0. Takes only the circuit's lock.
 */
static int feed_circuit(struct peer *pe, enum verdict v, int64_t now)
{
	switch (v) {
	case V_OK:
		return circuit_success(pe->http, now) ? -1 : 0;
	case V_FAIL:
		return circuit_failure(pe->http, now) ? 1 : 0;
	case V_NONE:
		circuit_abandon(pe->http, now);
		break;
	}
	return 0;
}

/* Logs a change of @pe's circuit that feed_circuit() reported as @move; @why is the failure. */
static void log_circuit(struct peers *p, struct peer *pe, int move, const char *why)
{
	struct circuit_info ci;
	int64_t now = mono_ns();
	double wait_s;

	if (!move)
		return;
	if (move < 0) {
		log_msg(LOG_INFO, "peer %s: circuit closed (the probe succeeded)", pe->name);
		return;
	}
	circuit_get(pe->http, &ci);
	wait_s = ci.retry_at > now ? (double)(ci.retry_at - now) / 1e9 : 0;
	if (ci.failed_probes == 0)
		log_msg(LOG_WARNING, "peer %s: circuit open after %u failures in a row (%s): no "
			"requests to it for %.1f s", pe->name, p->circuit_threshold, why, wait_s);
	else
		log_msg(LOG_INFO, "peer %s: probe %u failed (%s): circuit open for %.1f s more",
			pe->name, ci.failed_probes, why, wait_s);
}

/*
 * When @pe is due again, at @now: the breaker's retry time while its circuit is open, else
 * @closed_due. Lock held (p->lock, then the circuit's).
 */
static int64_t due_after(struct peers *p, struct peer *pe, int64_t now, int64_t closed_due)
{
	struct circuit_info ci;

	circuit_get(pe->http, &ci);
	switch (ci.state) {
	case CIRCUIT_OPEN:
		return ci.retry_at > now ? ci.retry_at : now;
	case CIRCUIT_HALF_OPEN:
		return now + p->interval_ns; /* someone else's probe is out; look again later */
	default:
		return closed_due;
	}
}

/*
 * Records how a pull of @pe ended: @err 0 = complete, else -errno with @msg; @v is what it says
 * about the host for its circuit.
 */
static void record_pull(struct peers *p, struct peer *pe, int err, enum verdict v,
			const char *msg)
{
	enum peer_state before;
	uint32_t failures;
	int64_t now = mono_ns();
	int move = feed_circuit(pe, v, now);
	curl_off_t first_byte_us = 0;
	bool open;

	/* The time to the first byte of a small request is about the round trip. */
	if (err == 0 &&
	    curl_easy_getinfo(p->curl, CURLINFO_STARTTRANSFER_TIME_T, &first_byte_us) != CURLE_OK)
		first_byte_us = 0;
	pthread_mutex_lock(&p->lock);
	before = pe->st.state;
	if (err == 0) {
		pe->st.state = PEER_UP;
		pe->st.consecutive_failures = 0;
		pe->st.last_seen = now_s();
		if (first_byte_us > 0) {
			double rtt = (double)first_byte_us / 1e6;

			pe->st.rtt_s = pe->st.rtt_s > 0 ? PEER_EWMA_ALPHA * rtt +
							  (1 - PEER_EWMA_ALPHA) * pe->st.rtt_s
							: rtt;
		}
	} else {
		pe->st.errors++;
		pe->st.consecutive_failures++;
		pe->st.state = pe->st.consecutive_failures >= PEER_DOWN_AFTER ? PEER_DOWN :
									      PEER_DEGRADED;
		snprintf(pe->st.last_error, sizeof(pe->st.last_error), "%s", msg);
	}
	open = circuit_state(pe->http) != CIRCUIT_CLOSED;
	if (open)
		pe->st.state = PEER_DOWN;
	failures = pe->st.consecutive_failures;
	pe->due = due_after(p, pe, now, pe->notified ? now : now + next_delay_ns(p, pe));
	pe->notified = false;
	if (!pe->attempted) {
		pe->attempted = true;
		if (--p->first_pending == 0)
			pthread_cond_broadcast(&p->first_cond);
	}
	pthread_mutex_unlock(&p->lock);

	if (err == 0 && !open && (before == PEER_DEGRADED || before == PEER_DOWN))
		log_msg(LOG_INFO, "peer %s: reachable again", pe->name);
	else if (err && move <= 0 && !open &&
		 (failures == 1 || (failures == PEER_DOWN_AFTER && before != PEER_DOWN)))
		log_msg(LOG_WARNING, "peer %s: %s%s", pe->name, msg,
			failures >= PEER_DOWN_AFTER ? " (host is down)" : "");
	else if (err)
		log_msg(LOG_DEBUG, "peer %s: %s", pe->name, msg);
	log_circuit(p, pe, move, msg);
}

/* ---- parsing a manifest ---- */

__attribute__((format(printf, 3, 4)))
static void pull_fail(struct pull *pl, int err, const char *fmt, ...)
{
	va_list ap;

	if (pl->err)
		return; /* the first failure is the one to report */
	pl->err = err;
	va_start(ap, fmt);
	vsnprintf(pl->errmsg, sizeof(pl->errmsg), fmt, ap);
	va_end(ap);
}

static void batch_clear(struct pull *pl)
{
	for (size_t i = 0; i < pl->n_batch; i++) {
		free((char *)pl->batch[i].path);
		free((char *)pl->batch[i].origin);
	}
	pl->n_batch = 0;
}

/*
 * Applies the batch with the host's position moved to @pos, then reports each entry. A catalog
 * failure ends the pull (nothing of the batch was applied, the position did not move).
 */
static void batch_flush(struct pull *pl, int64_t pos)
{
	struct peers *p = pl->p;
	struct peer *pe = pl->pe;
	int64_t seen = now_s();
	int ret;

	ret = catalog_apply_remote(p->cat, pe->name, pl->batch, pl->n_batch, pos, seen);
	if (ret) {
		pull_fail(pl, ret, "catalog: applying the manifest of %s: %s", pe->name,
			  strerror(-ret));
		pl->lost = true;
		goto out;
	}
	pthread_mutex_lock(&p->lock);
	pe->st.last_seq = pos;
	pthread_mutex_unlock(&p->lock);
	pl->applied += pl->n_batch;
	for (size_t i = 0; i < pl->n_batch; i++) {
		struct cat_entry *e = &pl->batch[i];

		if (e->deleted) {
			if (p->ops.remote_delete)
				p->ops.remote_delete(p->arg, pe->host_idx, pl->batch_cat[i],
						     e->path);
		} else if (p->ops.remote_put) {
			e->confirmed_at = seen;
			p->ops.remote_put(p->arg, pe->host_idx, pl->batch_cat[i], e);
		}
	}
out:
	batch_clear(pl);
}

static bool json_int_of(const json_t *o, const char *key, json_int_t *v)
{
	const json_t *j = json_object_get(o, key);

	if (!json_is_integer(j))
		return false;
	*v = json_integer_value(j);
	return true;
}

/* The string at @key if it is one (without NUL bytes: jansson refuses them by default). */
static const char *json_str_of(const json_t *o, const char *key)
{
	const json_t *j = json_object_get(o, key);

	return json_is_string(j) ? json_string_value(j) : NULL;
}

static void bad_entry(struct pull *pl, json_int_t seq, bool seq_known, const char *why)
{
	char seqbuf[24] = "?";

	pl->bad++;
	if (seq_known)
		snprintf(seqbuf, sizeof(seqbuf), "%lld", (long long)seq);
	log_msg(pl->bad <= PULL_WARN_BAD ? LOG_WARNING : LOG_DEBUG,
		"peer %s: skipping bad manifest entry (seq %s): %s", pl->pe->name, seqbuf, why);
}

/* One entry line, parsed into @o. Valid entries join the batch; bad ones are skipped. */
static void handle_entry(struct pull *pl, json_t *o)
{
	const struct mfs_config *cfg = pl->p->cfg;
	struct cat_entry *e;
	const char *category, *path, *hash_s, *origin;
	const json_t *del;
	json_int_t seq, size, mtime_ns;
	struct hash128 hash;
	char why[160];
	bool deleted;
	int cat_idx;

	pl->lines++;
	if (!json_int_of(o, "seq", &seq) || seq <= 0) {
		bad_entry(pl, 0, false, "seq missing or not a positive integer");
		return;
	}
	if (seq <= pl->last_seq) {
		snprintf(why, sizeof(why), "seq not after %lld (entries must come in seq order)",
			 (long long)pl->last_seq);
		bad_entry(pl, seq, true, why);
		return;
	}
	if (seq > pl->header_seq) {
		/* Published while the response was produced: the next pull starts below it. */
		log_msg(LOG_DEBUG, "peer %s: entry seq %lld is after the header's %lld, left for "
			"the next pull", pl->pe->name, (long long)seq, (long long)pl->header_seq);
		return;
	}
	/* From here the seq is in order, so even a bad entry is consumed. */
	pl->last_seq = seq;
	category = json_str_of(o, "category");
	path = json_str_of(o, "path");
	del = json_object_get(o, "deleted");
	if (!category || (cat_idx = config_category_index(cfg, category)) < 0) {
		snprintf(why, sizeof(why), "unknown category '%.64s'", category ? category : "");
		bad_entry(pl, seq, true, why);
		return;
	}
	if (!path || strlen(path) > PULL_MAX_PATH || !path_is_clean_relative(path)) {
		bad_entry(pl, seq, true, path ? "path is not a clean relative path of at most "
						 "4096 bytes" : "path missing");
		return;
	}
	if (del && !json_is_boolean(del)) {
		bad_entry(pl, seq, true, "deleted is not a boolean");
		return;
	}
	deleted = del && json_is_true(del);
	size = mtime_ns = 0;
	hash = (struct hash128){ 0, 0 };
	origin = NULL;
	if (!deleted) {
		hash_s = json_str_of(o, "hash");
		origin = json_str_of(o, "origin");
		if (!json_int_of(o, "size", &size) || size < 0 || size > PULL_MAX_SIZE) {
			bad_entry(pl, seq, true, "size missing or out of range 0..2^50");
			return;
		}
		if (!json_int_of(o, "mtime_ns", &mtime_ns)) {
			bad_entry(pl, seq, true, "mtime_ns missing or not an integer");
			return;
		}
		if (!hash_s || hash_parse(hash_s, &hash) != 0) {
			bad_entry(pl, seq, true, "hash missing or not xxh3-128:<32 hex>");
			return;
		}
		if (!origin || !*origin || strlen(origin) > PULL_MAX_ORIGIN) {
			bad_entry(pl, seq, true, "origin missing, empty or longer than 255 bytes");
			return;
		}
	}

	e = &pl->batch[pl->n_batch];
	*e = (struct cat_entry){
		.host = pl->pe->name,
		.category = cfg->categories[cat_idx].name,
		.size = (uint64_t)size,
		.mtime_ns = mtime_ns,
		.hash = hash,
		.seq = seq,
		.deleted = deleted,
	};
	e->path = strdup(path);
	e->origin = origin ? strdup(origin) : NULL;
	if (!e->path || (origin && !e->origin)) {
		free((char *)e->path);
		free((char *)e->origin);
		pull_fail(pl, -ENOMEM, "out of memory parsing the manifest of %s", pl->pe->name);
		pl->lost = true;
		return;
	}
	pl->batch_cat[pl->n_batch++] = (size_t)cat_idx;
	if (pl->n_batch == PULL_BATCH)
		batch_flush(pl, pl->last_seq);
}

static void handle_header(struct pull *pl, json_t *o)
{
	const char *node = json_str_of(o, "node");
	json_int_t version = 0, seq = 0, room = 0;

	if (!json_int_of(o, "manifest", &version) || version != 1 || !json_int_of(o, "seq", &seq) ||
	    seq < 0 || !node) {
		pull_fail(pl, -EPROTO, "bad manifest header from %s", pl->pe->hostport);
		return;
	}
	if (strcmp(node, pl->pe->name) != 0) {
		pull_fail(pl, -EPROTO, "%s serves the manifest of '%.64s', not of %s",
			  pl->pe->hostport, node, pl->pe->name);
		return;
	}
	pl->header_seen = true;
	pl->header_seq = seq;
	if (json_int_of(o, "room", &room) && room >= 0) {
		pthread_mutex_lock(&pl->p->lock);
		pl->pe->st.room = (uint64_t)room;
		pl->pe->st.room_known = true;
		pthread_mutex_unlock(&pl->p->lock);
	}
	if (seq < pl->since) {
		pl->reset = true; /* not a failure: the caller starts over from 0 */
		pull_fail(pl, -ESTALE, "manifest seq went back from %lld to %lld",
			  (long long)pl->since, (long long)seq);
	}
}

static void handle_trailer(struct pull *pl, json_t *o)
{
	json_int_t count;

	if (!json_is_true(json_object_get(o, "end"))) {
		bad_entry(pl, 0, false, "\"end\" is not true");
		return;
	}
	pl->trailer_seen = true;
	if (json_int_of(o, "count", &count) && (size_t)count != pl->lines)
		log_msg(LOG_DEBUG, "peer %s: trailer counts %lld entries, %zu came", pl->pe->name,
			(long long)count, pl->lines);
}

static void handle_line(struct pull *pl, const char *buf, size_t len)
{
	json_error_t jerr;
	json_t *o;
	char why[200];

	while (len && (buf[len - 1] == '\r' || buf[len - 1] == ' ' || buf[len - 1] == '\t'))
		len--;
	if (!len)
		return;
	if (pl->trailer_seen) {
		pl->after_trailer++;
		return;
	}
	o = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!json_is_object(o)) {
		if (!pl->header_seen) {
			pull_fail(pl, -EPROTO, "manifest from %s does not start with a header line",
				  pl->pe->hostport);
		} else {
			pl->lines++;
			snprintf(why, sizeof(why), "not a JSON object: %s",
				 o ? "other JSON value" : jerr.text);
			bad_entry(pl, 0, false, why);
		}
	} else if (!pl->header_seen) {
		handle_header(pl, o);
	} else if (json_object_get(o, "end")) {
		handle_trailer(pl, o);
	} else {
		handle_entry(pl, o);
	}
	json_decref(o);
}

/* A line too long to be an entry: skipped whole, the buffer never grows. */
static void overlong_line(struct pull *pl)
{
	if (!pl->header_seen) {
		pull_fail(pl, -EPROTO, "manifest header from %s is longer than %d bytes",
			  pl->pe->hostport, PULL_MAX_LINE);
		return;
	}
	pl->lines++;
	bad_entry(pl, 0, false, "line longer than 64 KiB");
}

/* Cuts @len bytes of the body into lines. Stops at the first failure. */
static void pull_feed(struct pull *pl, const char *data, size_t len)
{
	while (len && !pl->err) {
		const char *nl = memchr(data, '\n', len);
		size_t take = nl ? (size_t)(nl - data) : len;

		if (pl->discarding) {
			pl->discarding = !nl;
		} else if (pl->line_len + take > PULL_MAX_LINE) {
			overlong_line(pl);
			pl->line_len = 0;
			pl->discarding = !nl;
		} else if (pl->line_len == 0 && nl) {
			handle_line(pl, data, take); /* whole in curl's buffer: no copy */
		} else {
			memcpy(pl->line + pl->line_len, data, take);
			pl->line_len += take;
			if (nl) {
				handle_line(pl, pl->line, pl->line_len);
				pl->line_len = 0;
			}
		}
		take += nl ? 1 : 0;
		data += take;
		len -= take;
	}
}

static size_t on_manifest_data(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	struct pull *pl = userdata;
	long code = 0;

	if (is_stopping(pl->p)) {
		pull_fail(pl, -ECANCELED, "%s: cancelled (stopping)", pl->pe->hostport);
		return 0;
	}
	if (!pl->header_seen && !pl->err) {
		curl_easy_getinfo(pl->p->curl, CURLINFO_RESPONSE_CODE, &code);
		if (code != 200) {
			pull_fail(pl, -EPROTO, "HTTP %ld from %s", code, pl->pe->hostport);
			return 0;
		}
	}
	pull_feed(pl, ptr, size * nmemb);
	/* Anything but the full count makes curl abort the transfer (CURLE_WRITE_ERROR). */
	return pl->err ? 0 : size * nmemb;
}

static size_t on_discard(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	return size * nmemb;
}

static int on_progress(void *clientp, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
		       curl_off_t ulnow)
{
	return is_stopping(clientp) ? 1 : 0;
}

/* ---- requests ---- */

/* What went wrong with a transfer that curl reports as @cc, as -errno and a message. */
static int describe_curl_error(struct peers *p, const struct peer *pe, CURLcode cc, char *msg,
			       size_t size)
{
	const char *detail = p->curl_err[0] ? p->curl_err : curl_easy_strerror(cc);
	long code = 0, os_errno = 0;
	int ret;

	switch (cc) {
	case CURLE_COULDNT_CONNECT:
		curl_easy_getinfo(p->curl, CURLINFO_OS_ERRNO, &os_errno);
		ret = os_errno > 0 ? -(int)os_errno : -ECONNREFUSED;
		snprintf(msg, size, "connect to %s: %.160s", pe->hostport,
			 os_errno > 0 ? strerror((int)os_errno) : detail);
		break;
	case CURLE_COULDNT_RESOLVE_HOST:
		ret = -EHOSTUNREACH;
		snprintf(msg, size, "resolve %s: %.160s", pe->hostport, detail);
		break;
	case CURLE_OPERATION_TIMEDOUT:
		ret = -ETIMEDOUT;
		snprintf(msg, size, "%s: timed out: %.160s", pe->hostport, detail);
		break;
	case CURLE_HTTP_RETURNED_ERROR:
		curl_easy_getinfo(p->curl, CURLINFO_RESPONSE_CODE, &code);
		ret = code == 401 || code == 403 ? -EACCES : code == 404 ? -ENOENT : -EIO;
		snprintf(msg, size, "HTTP %ld from %s", code, pe->hostport);
		break;
	case CURLE_ABORTED_BY_CALLBACK:
		ret = -ECANCELED;
		snprintf(msg, size, "%s: cancelled (stopping)", pe->hostport);
		break;
	case CURLE_OUT_OF_MEMORY:
		ret = -ENOMEM;
		snprintf(msg, size, "%s: out of memory", pe->hostport);
		break;
	default:
		ret = -EIO;
		snprintf(msg, size, "%s: %.160s", pe->hostport, detail);
		break;
	}
	return ret;
}

/* The options every request shares; @timeout_ms bounds the whole transfer. */
static void setup_request(struct peers *p, const char *url, long connect_ms, long timeout_ms)
{
	CURL *c = p->curl;

	curl_easy_reset(c); /* keeps the connection and DNS caches */
	p->curl_err[0] = '\0';
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, p->curl_err);
#if LIBCURL_VERSION_NUM >= 0x075500
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http");
#else
	curl_easy_setopt(c, CURLOPT_PROTOCOLS, (long)CURLPROTO_HTTP);
#endif
	/* Cluster traffic goes straight to the peer, whatever http_proxy says. */
	curl_easy_setopt(c, CURLOPT_PROXY, "");
	curl_easy_setopt(c, CURLOPT_USERAGENT, "meshfs/" MESHFS_VERSION);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, connect_ms);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
	curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
	curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, PEER_LOW_SPEED_TIME_S);
	curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(c, CURLOPT_FAILONERROR, 1L);
	curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
	curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
	curl_easy_setopt(c, CURLOPT_XFERINFODATA, p);
}

/*
 * Whether the catalog's last_seen of @pe is old enough to be rewritten after a pull that brought
 * nothing: an unchanged host is not a write every interval.
 */
static bool seen_is_old(struct peers *p, const struct peer *pe)
{
	int64_t seen = 0;

	return catalog_host_get(p->cat, pe->name, NULL, &seen) != 0 ||
	       now_s() - seen >= PEER_SEEN_REFRESH_S;
}

/*
 * One manifest request for @pe from @since. Returns 0 for a complete response, -ESTALE when the
 * host's seq went back (nothing applied), else -errno with @msg.
 */
static int pull_manifest(struct peers *p, struct peer *pe, int64_t since, char *msg, size_t size)
{
	struct pull *pl = &p->pull;
	char url[512];
	CURLcode cc;
	int64_t pos;
	int ret;

	snprintf(url, sizeof(url), "%s/v1/manifest?since=%lld", pe->base_url, (long long)since);
	pl->pe = pe;
	pl->since = since;
	pl->line_len = 0;
	pl->discarding = pl->header_seen = pl->trailer_seen = pl->reset = false;
	pl->header_seq = 0;
	pl->last_seq = since;
	pl->lines = pl->applied = pl->bad = pl->after_trailer = 0;
	pl->n_batch = 0;
	pl->err = 0;
	pl->errmsg[0] = '\0';
	pl->lost = false;

	setup_request(p, url, PEER_CONNECT_TIMEOUT_MS, PEER_MANIFEST_TIMEOUT_MS);
	curl_easy_setopt(p->curl, CURLOPT_HTTPGET, 1L);
	curl_easy_setopt(p->curl, CURLOPT_HTTPHEADER, p->headers);
	curl_easy_setopt(p->curl, CURLOPT_WRITEFUNCTION, on_manifest_data);
	curl_easy_setopt(p->curl, CURLOPT_WRITEDATA, pl);
	cc = curl_easy_perform(p->curl);
	/* A last line without its newline still counts (a trailer, say). */
	if (!pl->err && !pl->discarding && pl->line_len && cc == CURLE_OK) {
		handle_line(pl, pl->line, pl->line_len);
		pl->line_len = 0;
	}

	if (pl->reset) {
		batch_clear(pl);
		ret = -ESTALE;
		snprintf(msg, size, "%s", pl->errmsg);
		goto out;
	}
	/* Keep what came, whatever happened after it (a cut connection, a stop): entries arrive
	 * in seq order, so the last one consumed is a safe position. */
	pos = pl->trailer_seen ? pl->header_seq : pl->last_seq;
	if (!pl->lost && (pl->n_batch || pos != since || (pl->trailer_seen && seen_is_old(p, pe))))
		batch_flush(pl, pos);
	batch_clear(pl);

	if (pl->err) {
		ret = pl->err;
		snprintf(msg, size, "%s", pl->errmsg);
	} else if (cc != CURLE_OK) {
		ret = describe_curl_error(p, pe, cc, msg, size);
	} else if (!pl->header_seen) {
		ret = -EPROTO;
		snprintf(msg, size, "empty manifest response from %s", pe->hostport);
	} else if (!pl->trailer_seen) {
		ret = -EPROTO;
		snprintf(msg, size, "manifest from %s cut short after seq %lld (no trailer)",
			 pe->hostport, (long long)pl->last_seq);
	} else {
		ret = 0;
	}
	if (pl->after_trailer)
		log_msg(LOG_DEBUG, "peer %s: %zu lines after the trailer ignored", pe->name,
			pl->after_trailer);
	if (pl->applied || pl->bad)
		log_msg(
		    pl->bad ? LOG_WARNING : LOG_DEBUG,
		    "peer %s: applied %zu manifest entries, skipped %zu bad ones, position %lld",
		    pe->name, pl->applied, pl->bad, (long long)(ret == 0 ? pos : pl->last_seq));
out:
	return ret;
}

/*
 * What the pull_manifest() that returned @ret says about the host: it answered unless the
 * request failed on its side. A pull that failed here (catalog, memory: pl->lost) after the
 * host answered counts as an answer.
 */
static enum verdict pull_verdict(struct peers *p, int ret)
{
	if (ret == 0 || ret == -ESTALE || p->pull.lost)
		return V_OK;
	return V_FAIL;
}

/* Pulls @pe's manifest from where this node is in it, and records the outcome. */
static void pull_host(struct peers *p, struct peer *pe)
{
	enum verdict v = V_NONE; /* until a request was made */
	char msg[256] = "";
	int64_t since = 0;
	int ret;

	ret = catalog_host_get(p->cat, pe->name, &since, NULL);
	if (ret) {
		snprintf(msg, sizeof(msg), "catalog: reading the position of %s: %s", pe->name,
			 strerror(-ret));
		goto out;
	}
	ret = pull_manifest(p, pe, since, msg, sizeof(msg));
	v = pull_verdict(p, ret);
	if (ret == -ESTALE) {
		log_msg(LOG_WARNING, "peer %s: %s: it has a new catalog, forgetting its entries",
			pe->name, msg);
		ret = catalog_reset_host(p->cat, pe->name);
		if (ret) {
			snprintf(msg, sizeof(msg), "catalog: resetting %s: %s", pe->name,
				 strerror(-ret));
			goto out;
		}
		pthread_mutex_lock(&p->lock);
		pe->st.last_seq = 0;
		pthread_mutex_unlock(&p->lock);
		if (p->ops.host_reset)
			p->ops.host_reset(p->arg, pe->host_idx);
		ret = pull_manifest(p, pe, 0, msg, sizeof(msg));
		v = pull_verdict(p, ret);
		if (ret == -ESTALE) { /* cannot happen from 0; never loop on it */
			ret = -EPROTO;
			v = V_FAIL;
		}
	}
out:
	if (ret != -ECANCELED || !is_stopping(p))
		record_pull(p, pe, ret, v, msg);
}

/*
 * POST /v1/notify to every peer whose circuit is closed and that is up or not contacted yet.
 * Each outcome feeds the circuit; a failure counts as an error of the host, with a debug line.
 */
static void announce(struct peers *p, int64_t seq)
{
	char url[512], *body = NULL, why[200];
	json_t *o;
	CURLcode cc;
	int move;

	o = json_pack("{s:s, s:I}", "node", p->cfg->node, "seq", (json_int_t)seq);
	body = o ? json_dumps(o, JSON_COMPACT) : NULL;
	json_decref(o);
	if (!body) {
		log_msg(LOG_DEBUG, "peers: announce: out of memory");
		return;
	}
	for (size_t i = 0; i < p->n_peers && !is_stopping(p); i++) {
		struct peer *pe = &p->peers[i];
		bool failing;

		pthread_mutex_lock(&p->lock);
		failing = pe->st.state == PEER_DOWN || pe->st.state == PEER_DEGRADED;
		pthread_mutex_unlock(&p->lock);
		/*
		 * A host whose last pull failed pulls us on its own interval once it is back (and
		 * says hello when it restarts): announcing to it would only add failures, each
		 * one counted by its circuit — a burst of publications would open it in
		 * milliseconds. An open circuit means no request at all.
		 */
		if (failing || circuit_state(pe->http) != CIRCUIT_CLOSED)
			continue;
		snprintf(url, sizeof(url), "%s/v1/notify", pe->base_url);
		setup_request(p, url, PEER_NOTIFY_CONNECT_MS, PEER_NOTIFY_TIMEOUT_MS);
		curl_easy_setopt(p->curl, CURLOPT_POSTFIELDS, body);
		curl_easy_setopt(p->curl, CURLOPT_HTTPHEADER, p->post_headers);
		curl_easy_setopt(p->curl, CURLOPT_WRITEFUNCTION, on_discard);
		cc = curl_easy_perform(p->curl);
		if (cc == CURLE_ABORTED_BY_CALLBACK || cc == CURLE_OUT_OF_MEMORY)
			continue; /* stopping, or this node's trouble: nothing about the host */
		if (cc == CURLE_OK) {
			log_circuit(p, pe, feed_circuit(pe, V_OK, mono_ns()), "");
			continue;
		}
		describe_curl_error(p, pe, cc, why, sizeof(why));
		move = feed_circuit(pe, V_FAIL, mono_ns());
		pthread_mutex_lock(&p->lock);
		pe->st.errors++;
		snprintf(pe->st.last_error, sizeof(pe->st.last_error), "notify: %s", why);
		pthread_mutex_unlock(&p->lock);
		log_msg(LOG_DEBUG, "peer %s: notify seq %lld: %s", pe->name, (long long)seq, why);
		log_circuit(p, pe, move, why);
	}
	free(body);
}

/* ---- the thread ---- */

static void *peers_main(void *arg)
{
	struct peers *p = arg;
	struct timespec ts;
	struct peer *next;
	int64_t now, seq;

	pthread_setname_np(pthread_self(), "meshfs-peers");
	pthread_mutex_lock(&p->lock);
	while (!p->stopping) {
		if (p->announce_pending) {
			p->announce_pending = false;
			seq = p->announce_seq;
			pthread_mutex_unlock(&p->lock);
			announce(p, seq);
			pthread_mutex_lock(&p->lock);
			continue;
		}
		next = NULL;
		for (size_t i = 0; i < p->n_peers; i++)
			if (!next || p->peers[i].due < next->due)
				next = &p->peers[i];
		now = mono_ns();
		if (next && next->due <= now) {
			next->notified = false;
			/* An open circuit: nothing goes to the host before the breaker lets the
			 * probe (this very pull) through. */
			if (!circuit_allow(next->http, now)) {
				next->due = due_after(p, next, now, now + p->interval_ns);
				continue;
			}
			pthread_mutex_unlock(&p->lock);
			pull_host(p, next);
			pthread_mutex_lock(&p->lock);
			continue;
		}
		if (!next) {
			pthread_cond_wait(&p->wake, &p->lock);
			continue;
		}
		ts.tv_sec = next->due / 1000000000;
		ts.tv_nsec = next->due % 1000000000;
		pthread_cond_timedwait(&p->wake, &p->lock, &ts);
	}
	pthread_mutex_unlock(&p->lock);
	return NULL;
}

/* ---- public API ---- */

static void peers_free(struct peers *p)
{
	if (!p)
		return;
	batch_clear(&p->pull);
	free(p->pull.batch);
	free(p->pull.batch_cat);
	free(p->pull.line);
	curl_slist_free_all(p->headers);
	curl_slist_free_all(p->post_headers);
	if (p->curl)
		curl_easy_cleanup(p->curl);
	for (size_t i = 0; i < p->n_peers; i++) {
		free(p->peers[i].base_url);
		circuit_free(p->peers[i].http);
	}
	free(p->peers);
	free(p->peer_of);
	pthread_cond_destroy(&p->first_cond);
	pthread_cond_destroy(&p->wake);
	pthread_mutex_destroy(&p->lock);
	free(p);
}

/* Appends @line to *@list; false on ENOMEM (the list is kept). */
static bool add_header(struct curl_slist **list, const char *line)
{
	struct curl_slist *l = curl_slist_append(*list, line);

	if (l)
		*list = l;
	return l != NULL;
}

static int make_headers(struct peers *p)
{
	const char *token = p->cfg->token;
	char *auth = NULL;
	bool ok = true;
	int ret = 0;

	if (token && *token) {
		if (asprintf(&auth, "Authorization: Bearer %s", token) < 0) {
			auth = NULL;
			ret = -ENOMEM;
			goto out;
		}
		ok = add_header(&p->headers, auth) && add_header(&p->post_headers, auth);
	}
	ok = ok && add_header(&p->headers, "Accept: application/x-ndjson") &&
	     add_header(&p->post_headers, "Content-Type: application/json");
	if (!ok)
		ret = -ENOMEM;
out:
	free(auth);
	return ret;
}

/*
 * The breaker settings from the config's auto_sync section; a value that is not positive (a
 * config built in code) takes the default.
 */
static void circuit_settings(struct peers *p, struct circuit_params *cp)
{
	const struct mfs_config *cfg = p->cfg;

	circuit_params_default(cp);
	if (cfg->auto_sync.circuit_failure_threshold > 0)
		cp->failure_threshold = (unsigned)cfg->auto_sync.circuit_failure_threshold;
	if (cfg->auto_sync.circuit_recovery_seconds > 0)
		cp->recovery_ns = (int64_t)cfg->auto_sync.circuit_recovery_seconds * 1000000000LL;
	cp->probe_timeout_ns = (int64_t)PEER_PROBE_TIMEOUT_MS * NS_PER_MS;
	/* A host that says it is back may be probed once per pull interval. */
	cp->hint_gap_ns = p->interval_ns;
	p->circuit_threshold = cp->failure_threshold;
}

/* Fills in the peers: every active host but this one that has an address. */
static int make_peers(struct peers *p)
{
	const struct mfs_config *cfg = p->cfg;
	struct circuit_params cp;
	char url[512];
	int64_t now = mono_ns();
	int ret = 0;

	circuit_settings(p, &cp);
	/* + 1: a config without hosts still gets non-NULL arrays. */
	p->peer_of = calloc(cfg->n_hosts + 1, sizeof(*p->peer_of));
	p->peers = calloc(cfg->n_hosts + 1, sizeof(*p->peers));
	if (!p->peer_of || !p->peers) {
		ret = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < cfg->n_hosts; i++) {
		const struct cfg_host *h = &cfg->hosts[i];
		struct peer *pe = &p->peers[p->n_peers];
		int64_t seq = 0, seen = 0;

		p->peer_of[i] = -1;
		if (h == cfg->self || (cfg->node && strcmp(h->name, cfg->node) == 0) || !h->active)
			continue;
		if (peers_base_url(cfg, i, url, sizeof(url)) != 0)
			continue;
		/* Seeded apart, so that nodes that lost the same host do not probe in step. */
		cp.seed = (uint64_t)now ^ ((uint64_t)(i + 1) * 0x9e3779b97f4a7c15ULL);
		ret = circuit_new(&cp, &pe->http);
		if (ret)
			goto out;
		pe->base_url = strdup(url);
		if (!pe->base_url) {
			circuit_free(pe->http);
			pe->http = NULL;
			ret = -ENOMEM;
			goto out;
		}
		pe->host_idx = i;
		pe->name = h->name;
		pe->hostport = pe->base_url + strlen("http://");
		pe->due = now;
		/* Show what the catalog remembers until the first pull says more. */
		if (catalog_host_get(p->cat, h->name, &seq, &seen) == 0) {
			pe->st.last_seq = seq;
			pe->st.last_seen = seen;
		}
		p->peer_of[i] = (ssize_t)p->n_peers++;
	}
	p->first_pending = p->n_peers;
out:
	return ret;
}

int peers_start(const struct mfs_config *cfg, struct catalog *cat, const struct peers_ops *ops,
		void *arg, int interval_ms, struct peers **out)
{
	pthread_condattr_t ca;
	struct peers *p = NULL;
	int ret = -EINVAL;

	if (!cfg || !cfg->node || !cat || !out || interval_ms < 0)
		goto out;
	pthread_once(&curl_once, curl_init_once);
	if (curl_init_rc != CURLE_OK) {
		log_msg(LOG_ERR, "peers: curl_global_init: %s", curl_easy_strerror(curl_init_rc));
		ret = -EIO;
		goto out;
	}
	ret = -ENOMEM;
	p = calloc(1, sizeof(*p));
	if (!p)
		goto out;
	pthread_mutex_init(&p->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&p->wake, &ca);
	pthread_cond_init(&p->first_cond, &ca);
	pthread_condattr_destroy(&ca);
	p->cfg = cfg;
	p->cat = cat;
	if (ops)
		p->ops = *ops;
	p->arg = arg;
	p->interval_ns =
	    (int64_t)(interval_ms ? interval_ms : PEER_DEFAULT_INTERVAL_MS) * NS_PER_MS;
	p->pull.p = p;
	p->pull.line = malloc(PULL_MAX_LINE);
	p->pull.batch = calloc(PULL_BATCH, sizeof(*p->pull.batch));
	p->pull.batch_cat = calloc(PULL_BATCH, sizeof(*p->pull.batch_cat));
	p->curl = curl_easy_init();
	if (!p->pull.line || !p->pull.batch || !p->pull.batch_cat || !p->curl)
		goto out;
	ret = make_headers(p);
	if (ret)
		goto out;
	ret = make_peers(p);
	if (ret)
		goto out;
	ret = -pthread_create(&p->thread, NULL, peers_main, p);
	if (ret)
		goto out;
	p->thread_started = true;
	log_msg(LOG_DEBUG, "peers: pulling %zu hosts every %d ms", p->n_peers,
		(int)(p->interval_ns / NS_PER_MS));
	*out = p;
	p = NULL;
out:
	peers_free(p);
	return ret;
}

void peers_stop(struct peers *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->lock);
	__atomic_store_n(&p->stopping, true, __ATOMIC_RELAXED);
	pthread_cond_broadcast(&p->wake);
	pthread_cond_broadcast(&p->first_cond);
	pthread_mutex_unlock(&p->lock);
	if (p->thread_started)
		pthread_join(p->thread, NULL);
	peers_free(p);
}

void peers_notify(struct peers *p, const char *host)
{
	int64_t now = mono_ns();
	bool any = false, found = false, early = false;

	if (!p)
		return;
	pthread_mutex_lock(&p->lock);
	for (size_t i = 0; i < p->n_peers; i++) {
		struct peer *pe = &p->peers[i];

		if (host && strcmp(pe->name, host) != 0)
			continue;
		found = true;
		/*
		 * Open circuit: the host telling us it changed says it is back, so its probe
		 * goes now, or one pull interval after the circuit last (re)opened if that is
		 * later — so a host that notifies while its manifest keeps failing cannot make us
		 * ask it more often than we pull a healthy host. A "pull everyone" (@host NULL)
		 * says nothing about the host: it waits for its probe.
		 */
		if (circuit_state(pe->http) == CIRCUIT_OPEN) {
			if (!host)
				continue;
			if (!circuit_expedite(pe->http, now)) {
				early = true;
				pe->due = due_after(p, pe, now, pe->due);
				pthread_cond_signal(
				    &p->wake); /* it may be sooner than the thread thinks */
				continue;
			}
		}
		if (pe->due > now)
			pe->due = now;
		pe->notified = true;
		any = true;
	}
	if (any)
		pthread_cond_signal(&p->wake);
	pthread_mutex_unlock(&p->lock);
	if (!found && host)
		log_msg(LOG_DEBUG, "peers: notify from %s, which is not a pulled host", host);
	else if (early)
		log_msg(LOG_DEBUG, "peers: notify from %s, whose circuit opened less than a "
			"pull interval ago: probing it when that is over", host);
}

void peers_announce(struct peers *p, int64_t seq)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->lock);
	/* Only the latest seq matters: announcements not yet sent merge into one. */
	if (!p->announce_pending || seq > p->announce_seq)
		p->announce_seq = seq;
	p->announce_pending = true;
	pthread_cond_signal(&p->wake);
	pthread_mutex_unlock(&p->lock);
}

void peers_status(struct peers *p, size_t host_idx, struct peer_status *out)
{
	struct circuit_info ci;
	struct peer *pe;
	int64_t now;

	if (!out)
		return;
	memset(out, 0, sizeof(*out));
	out->circuit = CIRCUIT_CLOSED;
	pe = peer_by_idx(p, host_idx);
	if (!pe)
		return;
	pthread_mutex_lock(&p->lock);
	*out = pe->st;
	circuit_get(pe->http, &ci);
	pthread_mutex_unlock(&p->lock);
	out->circuit = ci.state;
	if (ci.state != CIRCUIT_CLOSED)
		out->state = PEER_DOWN;
	now = mono_ns();
	if (ci.state == CIRCUIT_OPEN && ci.retry_at > now)
		out->probe_in_ms = (ci.retry_at - now + NS_PER_MS - 1) / NS_PER_MS;
}

bool peers_allow(struct peers *p, size_t host_idx)
{
	struct peer *pe = peer_by_idx(p, host_idx);

	return !pe || circuit_state(pe->http) == CIRCUIT_CLOSED;
}

/* What a fetch that ended with @err says about its host (see peers_record_transfer). */
static enum verdict transfer_verdict(int err)
{
	switch (err) {
	case 0:
	case -ENOENT:
	case -ESTALE:
		return V_OK;
	case -ECANCELED:
	case -ENOSPC:
	case -EDQUOT:
	case -ENOMEM:
		return V_NONE;
	default:
		return V_FAIL;
	}
}

void peers_record_transfer(struct peers *p, size_t host_idx, uint64_t bytes, int64_t ns, int err)
{
	struct peer *pe = peer_by_idx(p, host_idx);
	enum verdict v = transfer_verdict(err);
	char why[160] = "";
	int move = 0;
	double bps;

	if (!pe)
		return;
	/* Not the host's doing: neither an error of it nor anything for its circuit (and a
	 * V_NONE must not give back a probe that is not the fetcher's). */
	if (v != V_NONE)
		move = feed_circuit(pe, v, mono_ns());
	if (err)
		snprintf(why, sizeof(why), "fetch: %s", strerror(err < 0 ? -err : err));
	pthread_mutex_lock(&p->lock);
	if (err && v != V_NONE) {
		pe->st.errors++;
		snprintf(pe->st.last_error, sizeof(pe->st.last_error), "%s", why);
	} else if (!err && bytes >= PEER_MIN_SAMPLE_BYTES && ns > 0) {
		bps = (double)bytes * 1e9 / (double)ns;
		pe->st.throughput_bps = pe->st.throughput_bps > 0 ?
			PEER_EWMA_ALPHA * bps + (1 - PEER_EWMA_ALPHA) * pe->st.throughput_bps : bps;
	}
	pthread_mutex_unlock(&p->lock);
	log_circuit(p, pe, move, why);
}

int peers_wait_first_pull(struct peers *p, int timeout_ms)
{
	struct timespec ts;
	int64_t deadline;
	int ret = 0;

	if (!p)
		return -EINVAL;
	deadline = mono_ns() + (int64_t)(timeout_ms > 0 ? timeout_ms : 0) * NS_PER_MS;
	ts.tv_sec = deadline / 1000000000;
	ts.tv_nsec = deadline % 1000000000;
	pthread_mutex_lock(&p->lock);
	while (p->first_pending > 0 && !p->stopping && ret == 0)
		ret = -pthread_cond_timedwait(&p->first_cond, &p->lock, &ts);
	if (p->first_pending == 0)
		ret = 0;
	else if (ret == 0)
		ret = -ECANCELED; /* stopped */
	pthread_mutex_unlock(&p->lock);
	return ret;
}
