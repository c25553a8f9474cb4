/*
 * dataserver — this node's HTTP data server on libmicrohttpd (docs/protocol.md is the contract).
 *
 * The listening socket is made here, not by MHD: MHD_start_daemon() reports a taken port
 * only as NULL (errno unreliable), while our own bind() gives the real errno, so "port in
 * use" reaches the user as -EADDRINUSE. The bound socket is handed to MHD with
 * MHD_OPTION_LISTEN_SOCKET; MHD runs its own epoll loop on a pool of 4 threads and closes the
 * socket in MHD_stop_daemon(). Slow or hostile clients are bounded by a connection limit
 * (256), a per-address limit (64) and an idle timeout (30 s); request bodies are only read
 * where one is expected (POST /v1/notify, at most 4 KiB).
 *
 * Routes: GET /v1/health without authentication; everything else first needs
 * "Authorization: Bearer <token>" when the config has a token (compared in constant time;
 * 401 otherwise), then
 *   GET  /v1/manifest?since=SEQ   this node's catalog changes as NDJSON, streamed in pages
 *   GET  /v1/chunks/<cat>/<path>  the chunk hashes of the current version (JSON)
 *   GET  /v1/files/<cat>/<path>   the content (sendfile from the fd), single Range, ETag
 *   POST /v1/notify               a peer published: pull its manifest now (204)
 *   GET  /metrics                 Prometheus text
 * HEAD is answered like GET without the body. A wrong method gets 405, an unknown path 404.
 *
 * MHD normally percent-decodes the URL before we see it; it is given an unescape callback that
 * leaves the URL as sent instead. The file routes (/v1/chunks, /v1/files: path decoding and
 * confinement, openat2, ranges, ETags) are in dataserver_files.c, which says why; this file
 * has the server, dispatch, authentication, the other routes and the responses they share
 * (dataserver_int.h).
 *
 * The manifest is produced while it is sent: MHD pulls it through a content-reader callback,
 * which copies one page of catalog rows (catalog_changes_page) into the stream's buffer and
 * hands it out; no lock is held while MHD writes and the whole manifest is never in memory.
 *
 * Counters for /metrics are atomics in struct dataserver, updated by the MHD threads: requests
 * by endpoint and status when a response is queued, body bytes when a response completes (a
 * streamed manifest counts as it is produced), errors for 5xx answers and cut-short transfers.
 *
 * The listen address is cfg->listen_host: a numeric IPv4/IPv6 address, "localhost"
 * (127.0.0.1), or, failing both, a host name resolved once at start (a hosts entry's address
 * may be a name). INTERFACE.md requires a token for any non-loopback listen: without one the
 * server refuses to start (-EINVAL, logged) rather than serve the cluster's data to anyone.
 */
#include "sync/dataserver.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sync/cache.h"
#include "sync/catalog.h"
#include "sync/config.h"
#include "sync/daemon.h"
#include "sync/dataserver_int.h"
#include "sync/hash.h"
#include "sync/log.h"
#include "sync/namespace.h"
#include "sync/peers.h"
#include "sync/status.h"
#include "sync/util.h"

#define DS_THREADS 4
#define DS_MAX_CONNECTIONS 256
#define DS_MAX_PER_IP 64
#define DS_CONNECTION_TIMEOUT_S 30
#define DS_BACKLOG 128
#define MANIFEST_PAGE 1000		/* catalog rows per page of a manifest */
#define MANIFEST_BLOCK (16 * 1024)	/* what MHD asks the manifest reader for at once */
#define NOTIFY_MAX_BODY 4096
#define VERSION_RETRY_AFTER "2"		/* seconds: about one indexer quiet period */

enum endpoint {
	EP_HEALTH,
	EP_MANIFEST,
	EP_CHUNKS,
	EP_FILES,
	EP_NOTIFY,
	EP_METRICS,
	EP_OTHER,
	EP_COUNT
};

static const char *const endpoint_names[EP_COUNT] = {
	[EP_HEALTH] = "health",
	[EP_MANIFEST] = "manifest",
	[EP_CHUNKS] = "chunks",
	[EP_FILES] = "files",
	[EP_NOTIFY] = "notify",
	[EP_METRICS] = "metrics",
	[EP_OTHER] = "other",
};

#define CHUNKS_PREFIX "/v1/chunks/"
#define FILES_PREFIX "/v1/files/"

/* HTTP status codes are 100..599; one counter per (endpoint, code) keeps /metrics exact. */
#define CODE_MIN 100
#define CODE_MAX 599

struct dataserver {
	struct daemon *d;
	struct MHD_Daemon *mhd;
	char *expected_auth;	/* "Bearer <token>", NULL when the config has no token */
	size_t expected_len;
	/* Updated by every MHD thread without a lock. */
	atomic_uint_fast64_t requests[EP_COUNT][CODE_MAX - CODE_MIN + 1];
	atomic_uint_fast64_t bytes_sent;
	atomic_uint_fast64_t errors;
};

/* One request, from its headers to its completion (MHD's per-request context). */
struct request {
	enum endpoint ep;
	bool head;		/* HEAD: headers only, no body is sent */
	bool answered;		/* a response is queued */
	bool streamed;		/* the body counts its own bytes as it is produced */
	uint64_t body_out;	/* bytes of the queued body, counted when it completes */
	char *body;		/* request body so far (POST /v1/notify) */
	size_t body_len;
	bool body_overflow;	/* more than NOTIFY_MAX_BODY bytes came */
};

struct daemon *dataserver_daemon(const struct dataserver *s)
{
	return s->d;
}

bool dataserver_is_head(const struct request *rq)
{
	return rq->head;
}

static void count_add(atomic_uint_fast64_t *c, uint64_t n)
{
	atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

static uint64_t count_get(atomic_uint_fast64_t *c)
{
	return atomic_load_explicit(c, memory_order_relaxed);
}

__attribute__((format(printf, 2, 0)))
static void mhd_log(void *cls, const char *fmt, va_list ap)
{
	char buf[512];
	size_t n;

	vsnprintf(buf, sizeof(buf), fmt, ap);
	n = strlen(buf);
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
		buf[--n] = '\0';
	/* MHD reports client misbehaviour here too (resets, bad requests): not our errors. */
	log_msg(LOG_INFO, "data server: %s", buf);
}

/* Leaves the URL and query arguments as the client sent them; see the file header. */
static size_t keep_escaped(void *cls, struct MHD_Connection *conn, char *s)
{
	return strlen(s);
}

/* ---- responses ---- */

enum MHD_Result dataserver_queue(struct dataserver *s, struct request *rq,
				 struct MHD_Connection *conn, unsigned code,
				 struct MHD_Response *resp, uint64_t body_len)
{
	enum MHD_Result ret;

	if (!resp)
		return MHD_NO;
	ret = MHD_queue_response(conn, code, resp);
	MHD_destroy_response(resp);
	if (ret == MHD_YES) {
		rq->answered = true;
		rq->body_out = rq->head ? 0 : body_len;
		if (code >= CODE_MIN && code <= CODE_MAX)
			count_add(&s->requests[rq->ep][code - CODE_MIN], 1);
		if (code >= 500)
			count_add(&s->errors, 1);
	}
	return ret;
}

bool dataserver_add_header(struct MHD_Response *resp, const char *name, const char *value)
{
	return !name || MHD_add_response_header(resp, name, value) == MHD_YES;
}

/*
 * Queues the @len bytes of @text (malloc'd; owned by the response from here on, freed on
 * failure too) as a @ctype response with @code, plus one optional header.
 */
static enum MHD_Result respond_text(struct dataserver *s, struct request *rq,
				    struct MHD_Connection *conn, unsigned code, const char *ctype,
				    char *text, size_t len, const char *hname, const char *hval)
{
	struct MHD_Response *resp;

	resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
	if (!resp) {
		free(text);
		return MHD_NO;
	}
	if (!dataserver_add_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype) ||
	    !dataserver_add_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store") ||
	    !dataserver_add_header(resp, hname, hval)) {
		MHD_destroy_response(resp);
		return MHD_NO;
	}
	return dataserver_queue(s, rq, conn, code, resp, len);
}

enum MHD_Result dataserver_respond_json(struct dataserver *s, struct request *rq,
					struct MHD_Connection *conn, unsigned code, json_t *body,
					const char *hname, const char *hval)
{
	char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
	char *line;
	size_t len;

	if (!text)
		return MHD_NO;
	len = strlen(text);
	line = realloc(text, len + 2);
	if (!line) {
		free(text);
		return MHD_NO;
	}
	line[len++] = '\n';
	line[len] = '\0';
	return respond_text(s, rq, conn, code, "application/json", line, len, hname, hval);
}

enum MHD_Result dataserver_respond_error(struct dataserver *s, struct request *rq,
					 struct MHD_Connection *conn, unsigned code,
					 const char *msg, const char *hname, const char *hval)
{
	json_t *body = json_pack("{s:s}", "error", msg);
	enum MHD_Result ret = dataserver_respond_json(s, rq, conn, code, body, hname, hval);

	json_decref(body);
	return ret;
}

enum MHD_Result dataserver_respond_errno(struct dataserver *s, struct request *rq,
					 struct MHD_Connection *conn, int err)
{
	switch (err) {
	case -EINVAL:
		return dataserver_respond_error(s, rq, conn, MHD_HTTP_BAD_REQUEST, "bad path", NULL,
						NULL);
	case -ENOENT:
	case -ENOTDIR:
	case -ELOOP:
	case -EXDEV:
	case -EISDIR:
		return dataserver_respond_error(s, rq, conn, MHD_HTTP_NOT_FOUND, "not found", NULL,
						NULL);
	case -ESTALE:
		return dataserver_respond_error(s, rq, conn, MHD_HTTP_SERVICE_UNAVAILABLE,
						"version changed, retry",
						MHD_HTTP_HEADER_RETRY_AFTER, VERSION_RETRY_AFTER);
	case -EMFILE:
	case -ENFILE:
	case -EBUSY:
		return dataserver_respond_error(s, rq, conn, MHD_HTTP_SERVICE_UNAVAILABLE,
						"busy, retry", MHD_HTTP_HEADER_RETRY_AFTER, "1");
	default:
		return dataserver_respond_error(s, rq, conn, MHD_HTTP_INTERNAL_SERVER_ERROR,
						strerror(-err), NULL, NULL);
	}
}

/* ---- authentication ---- */

/*
 * Compares @given with the @elen bytes of @expected in time that depends only on the two
 * lengths, never on where they first differ.
 */
static bool ct_equal(const char *given, const char *expected, size_t elen)
{
	size_t glen = strlen(given);
	volatile unsigned char diff = glen != elen;

	for (size_t i = 0; i < elen; i++)
		diff |= (unsigned char)expected[i] ^ (unsigned char)(i < glen ? given[i] : 0);
	return diff == 0;
}

static bool authorized(struct dataserver *s, struct MHD_Connection *conn)
{
	const char *auth;

	if (!s->expected_auth)
		return true;
	auth = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
	return auth && ct_equal(auth, s->expected_auth, s->expected_len);
}

/* ---- GET /v1/health ---- */

static enum MHD_Result route_health(struct dataserver *s, struct request *rq,
				    struct MHD_Connection *conn)
{
	json_t *health = status_health(s->d);
	enum MHD_Result ret;

	if (health)
		ret = dataserver_respond_json(s, rq, conn, MHD_HTTP_OK, health, NULL, NULL);
	else
		ret = dataserver_respond_error(s, rq, conn, MHD_HTTP_INTERNAL_SERVER_ERROR,
					       "cannot build the health report", NULL, NULL);
	json_decref(health);
	return ret;
}

/* ---- GET /v1/manifest ---- */

enum manifest_phase {
	MS_HEADER,
	MS_ENTRIES,
	MS_TRAILER,
	MS_DONE,
};

/* One manifest response being produced; owned by its MHD response. */
struct manifest_stream {
	struct dataserver *s;
	int64_t since;		/* as asked */
	int64_t head;		/* this node's seq when the response began; sent up to it */
	int64_t cursor;		/* the seq of the last row read from the catalog */
	uint64_t count;		/* entry lines produced */
	enum manifest_phase phase;
	bool past_head;		/* a row above head was met: nothing more to send */
	size_t rows;		/* rows of the current page */
	char *buf;		/* lines ready to be handed to MHD: [off, len) */
	size_t len, off, cap;
};

static int stream_reserve(struct manifest_stream *ms, size_t extra)
{
	size_t cap = ms->cap ? ms->cap : 64 * 1024;
	char *bigger;

	if (ms->len + extra <= ms->cap)
		return 0;
	while (cap < ms->len + extra)
		cap *= 2;
	bigger = realloc(ms->buf, cap);
	if (!bigger)
		return -ENOMEM;
	ms->buf = bigger;
	ms->cap = cap;
	return 0;
}

/* Appends @obj (released here) as one compact JSON line. */
static int stream_line(struct manifest_stream *ms, json_t *obj)
{
	size_t n;
	int ret = -ENOMEM;

	if (!obj)
		goto out;
	n = json_dumpb(obj, NULL, 0, JSON_COMPACT);
	if (n == 0 || stream_reserve(ms, n + 1) < 0)
		goto out;
	if (json_dumpb(obj, ms->buf + ms->len, n, JSON_COMPACT) != n)
		goto out;
	ms->len += n;
	ms->buf[ms->len++] = '\n';
	ret = 0;
out:
	json_decref(obj);
	return ret;
}

/* catalog_changes_page callback; runs under the catalog's lock, so it only copies. */
static int manifest_row(void *arg, const struct cat_entry *e)
{
	struct manifest_stream *ms = arg;
	char hash[HASH_STR_LEN];
	json_t *obj;

	ms->rows++;
	if (e->seq > ms->head) {
		ms->past_head = true;
		return 1;
	}
	ms->cursor = e->seq;
	if (e->deleted) {
		obj = json_pack("{s:I,s:s,s:s,s:b}", "seq", (json_int_t)e->seq, "category",
				e->category, "path", e->path, "deleted", 1);
	} else {
		hash_format(&e->hash, hash);
		obj = json_pack("{s:I,s:s,s:s,s:I,s:I,s:s,s:s}", "seq", (json_int_t)e->seq,
				"category", e->category, "path", e->path, "size",
				(json_int_t)e->size, "mtime_ns", (json_int_t)e->mtime_ns, "hash",
				hash, "origin", e->origin);
	}
	if (!obj) {
		/* json_pack refuses strings that are not UTF-8: a file name in another
		 * encoding cannot travel in JSON. Peers would drop the line anyway. */
		log_msg(LOG_WARNING, "data server: manifest: %s/%s (seq %lld) is not valid "
			"UTF-8; left out", e->category, e->path, (long long)e->seq);
		return 0;
	}
	if (stream_line(ms, obj) < 0)
		return -ENOMEM;
	ms->count++;
	return 0;
}

/* Refills ms->buf with the next lines. 0, or -errno (the stream is then cut short). */
/* What this node could still take in its cache (replica targets leave out a host without
 * room for the file, sync/autosync.c), capped to what JSON carries. */
static uint64_t manifest_room(struct daemon *d)
{
	uint64_t room = d->cache ? cache_room(d->cache) : 0;

	return room > (uint64_t)INT64_MAX ? (uint64_t)INT64_MAX : room;
}

static int manifest_fill(struct manifest_stream *ms)
{
	struct daemon *d = ms->s->d;
	int ret = 0;

	ms->len = ms->off = 0;
	switch (ms->phase) {
	case MS_HEADER:
		ret = stream_line(ms, json_pack("{s:i,s:s,s:I,s:I,s:I}", "manifest", 1, "node",
						d->cfg->node, "seq", (json_int_t)ms->head,
						"since", (json_int_t)ms->since, "room",
						(json_int_t)manifest_room(d)));
		ms->phase = ms->since >= ms->head ? MS_TRAILER : MS_ENTRIES;
		break;
	case MS_ENTRIES:
		ms->rows = 0;
		ret = catalog_changes_page(d->catalog, d->cfg->node, ms->cursor, MANIFEST_PAGE,
					   manifest_row, ms);
		if (ret < 0) {
			log_msg(LOG_WARNING, "data server: manifest after seq %lld: %s",
				(long long)ms->cursor, strerror(-ret));
			break;
		}
		ret = 0;
		if (ms->past_head || ms->rows < MANIFEST_PAGE || ms->cursor >= ms->head)
			ms->phase = MS_TRAILER;
		break;
	case MS_TRAILER:
		/* Every change up to head has been sent: the client is now at head. */
		ret = stream_line(ms, json_pack("{s:b,s:I,s:I}", "end", 1, "seq",
						(json_int_t)ms->head, "count",
						(json_int_t)ms->count));
		ms->phase = MS_DONE;
		break;
	case MS_DONE:
		break;
	}
	return ret;
}

static ssize_t manifest_read(void *cls, uint64_t pos, char *out, size_t max)
{
	struct manifest_stream *ms = cls;
	size_t n;

	while (ms->off == ms->len) {
		if (ms->phase == MS_DONE)
			return MHD_CONTENT_READER_END_OF_STREAM;
		if (manifest_fill(ms) < 0) {
			count_add(&ms->s->errors, 1);
			return MHD_CONTENT_READER_END_WITH_ERROR;
		}
	}
	n = ms->len - ms->off;
	if (n > max)
		n = max;
	memcpy(out, ms->buf + ms->off, n);
	ms->off += n;
	count_add(&ms->s->bytes_sent, n);
	return (ssize_t)n;
}

static void manifest_free(void *cls)
{
	struct manifest_stream *ms = cls;

	free(ms->buf);
	free(ms);
}

/* A seq in a query: decimal digits only, within int64. */
static int parse_seq(const char *s, int64_t *out)
{
	int64_t v = 0;

	if (!*s)
		return -EINVAL;
	for (; *s; s++) {
		if (*s < '0' || *s > '9' || v > (INT64_MAX - (*s - '0')) / 10)
			return -EINVAL;
		v = v * 10 + (*s - '0');
	}
	*out = v;
	return 0;
}

static enum MHD_Result route_manifest(struct dataserver *s, struct request *rq,
				      struct MHD_Connection *conn)
{
	const char *arg = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "since");
	struct manifest_stream *ms = NULL;
	struct MHD_Response *resp;
	int64_t since = 0, head = 0;
	int ret;

	if (arg && parse_seq(arg, &since) < 0)
		return dataserver_respond_error(s, rq, conn, MHD_HTTP_BAD_REQUEST,
						"since must be a non-negative integer", NULL, NULL);
	ret = catalog_max_seq(s->d->catalog, s->d->cfg->node, &head);
	if (ret < 0)
		return dataserver_respond_errno(s, rq, conn, ret);
	ms = calloc(1, sizeof(*ms));
	if (!ms)
		return MHD_NO;
	ms->s = s;
	ms->since = since;
	ms->head = head;
	ms->cursor = since;
	resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, MANIFEST_BLOCK, manifest_read,
						 ms, manifest_free);
	if (!resp) {
		manifest_free(ms);
		return MHD_NO;
	}
	if (!dataserver_add_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/x-ndjson") ||
	    !dataserver_add_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store")) {
		MHD_destroy_response(resp);
		return MHD_NO;
	}
	rq->streamed = true;
	return dataserver_queue(s, rq, conn, MHD_HTTP_OK, resp, 0);
}

/* ---- POST /v1/notify ---- */

static void take_body(struct request *rq, const char *data, size_t size)
{
	char *bigger;

	if (rq->body_overflow || rq->ep != EP_NOTIFY)
		return;
	if (size > NOTIFY_MAX_BODY - rq->body_len) {
		rq->body_overflow = true;
		return;
	}
	bigger = realloc(rq->body, rq->body_len + size);
	if (!bigger) {
		rq->body_overflow = true;
		return;
	}
	rq->body = bigger;
	memcpy(rq->body + rq->body_len, data, size);
	rq->body_len += size;
}

static enum MHD_Result route_notify(struct dataserver *s, struct request *rq,
				    struct MHD_Connection *conn)
{
	const struct mfs_config *cfg = s->d->cfg;
	const struct cfg_host *host;
	struct MHD_Response *resp;
	json_error_t jerr;
	json_t *root = NULL, *node, *seq;
	enum MHD_Result ret;

	if (rq->body_overflow) {
		ret = dataserver_respond_error(s, rq, conn, MHD_HTTP_CONTENT_TOO_LARGE,
					       "body too large", NULL, NULL);
		goto out;
	}
	if (rq->body_len)
		root = json_loadb(rq->body, rq->body_len, JSON_REJECT_DUPLICATES, &jerr);
	node = json_object_get(root, "node");
	seq = json_object_get(root, "seq");
	if (!json_is_object(root) || !json_is_string(node) || !json_is_integer(seq) ||
	    json_integer_value(seq) < 0) {
		ret = dataserver_respond_error(s, rq, conn, MHD_HTTP_BAD_REQUEST,
					       "expected {\"node\": NAME, \"seq\": N}", NULL, NULL);
		goto out;
	}
	host = config_find_host(cfg, json_string_value(node));
	if (!host) {
		ret = dataserver_respond_error(s, rq, conn, MHD_HTTP_NOT_FOUND, "unknown node",
					       NULL, NULL);
		goto out;
	}
	if (host == cfg->self) {
		ret = dataserver_respond_error(s, rq, conn, MHD_HTTP_BAD_REQUEST,
					       "that is this node", NULL, NULL);
		goto out;
	}
	log_msg(LOG_DEBUG, "data server: %s published up to seq %lld", host->name,
		(long long)json_integer_value(seq));
	if (s->d->peers)
		peers_notify(s->d->peers, host->name);
	resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
	ret = dataserver_queue(s, rq, conn, MHD_HTTP_NO_CONTENT, resp, 0);
out:
	json_decref(root);
	return ret;
}

/* ---- GET /metrics ---- */

static void metric_head(FILE *f, const char *name, const char *type, const char *help)
{
	fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void metric_u64(FILE *f, const char *name, const char *type, const char *help,
		       uint64_t v)
{
	metric_head(f, name, type, help);
	fprintf(f, "%s %llu\n", name, (unsigned long long)v);
}

/* Writes @v as a Prometheus label value: backslash, double quote and newline escaped. */
static void label_value(FILE *f, const char *v)
{
	for (; *v; v++) {
		if (*v == '\\' || *v == '"')
			fputc('\\', f);
		if (*v == '\n')
			fputs("\\n", f);
		else
			fputc(*v, f);
	}
}

/* What the peers module knows of each other host (manifests and fetches), one gauge or
 * counter per line of this table, one sample per host. */
static const struct {
	const char *name, *type, *help;
} peer_metrics[] = {
	{ "meshfs_peer_up", "gauge", "1 when the host answered its last requests." },
	{ "meshfs_peer_errors_total", "counter", "Failed requests to the host." },
	{ "meshfs_peer_manifest_seq", "gauge", "Position in the host's manifest." },
	{ "meshfs_peer_last_seen_timestamp_seconds", "gauge",
	  "Unix time of the last successful request to the host (0 = never)." },
	{ "meshfs_peer_throughput_bytes_per_second", "gauge",
	  "Fetch throughput measured from the host (0 = unknown)." },
};

/* The value of peer_metrics[@k] for a host in state @st. */
static double peer_value(const struct peer_status *st, size_t k)
{
	switch (k) {
	case 0:
		return st->state == PEER_UP;
	case 1:
		return (double)st->errors;
	case 2:
		return (double)st->last_seq;
	case 3:
		return (double)st->last_seen;
	default:
		return st->throughput_bps;
	}
}

static void write_peer_metrics(struct daemon *d, FILE *f)
{
	const struct mfs_config *cfg = d->cfg;
	struct peer_status *st = calloc(cfg->n_hosts ? cfg->n_hosts : 1, sizeof(*st));

	if (!st)
		return;
	for (size_t i = 0; i < cfg->n_hosts; i++)
		if (&cfg->hosts[i] != cfg->self)
			peers_status(d->peers, i, &st[i]);
	for (size_t k = 0; k < ARRAY_SIZE(peer_metrics); k++) {
		metric_head(f, peer_metrics[k].name, peer_metrics[k].type, peer_metrics[k].help);
		for (size_t i = 0; i < cfg->n_hosts; i++) {
			if (&cfg->hosts[i] == cfg->self)
				continue;
			fprintf(f, "%s{host=\"", peer_metrics[k].name);
			label_value(f, cfg->hosts[i].name);
			fprintf(f, "\"} %.0f\n", peer_value(&st[i], k));
		}
	}
	free(st);
}

/* Writes every metric in the Prometheus text format (version 0.0.4). */
static void write_metrics(struct dataserver *s, FILE *f)
{
	struct daemon *d = s->d;
	const union MHD_DaemonInfo *info;
	uint64_t nodes = 0, files = 0, bytes = 0;
	int64_t seq = 0, up = now_s() - d->started_at;

	metric_head(f, "meshfs_http_requests_total", "counter",
		    "Requests answered by the data server, by endpoint and status code.");
	for (size_t ep = 0; ep < EP_COUNT; ep++) {
		for (unsigned code = CODE_MIN; code <= CODE_MAX; code++) {
			uint64_t v = count_get(&s->requests[ep][code - CODE_MIN]);

			if (v)
				fprintf(f, "meshfs_http_requests_total{endpoint=\"%s\",code=\"%u\"}"
					" %llu\n", endpoint_names[ep], code, (unsigned long long)v);
		}
	}
	metric_u64(f, "meshfs_http_bytes_sent_total", "counter",
		   "Response body bytes sent by the data server.", count_get(&s->bytes_sent));
	metric_u64(f, "meshfs_http_errors_total", "counter",
		   "Data server responses with a 5xx status, and transfers cut short.",
		   count_get(&s->errors));
	info = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
	if (info)
		metric_u64(f, "meshfs_http_connections", "gauge",
			   "Open connections to the data server.", info->num_connections);
	ns_counts(d->ns, &nodes, &files, &bytes);
	metric_u64(f, "meshfs_namespace_files", "gauge",
		   "Files in the namespace (the union of every host).", files);
	metric_u64(f, "meshfs_namespace_bytes", "gauge",
		   "Bytes of the files in the namespace.", bytes);
	metric_u64(f, "meshfs_namespace_nodes", "gauge",
		   "Nodes (files and directories) in the namespace tree.", nodes);
	if (catalog_max_seq(d->catalog, d->cfg->node, &seq) == 0)
		metric_u64(f, "meshfs_manifest_seq", "gauge",
			   "This node's current manifest seq.", (uint64_t)seq);
	if (d->cache) {
		uint64_t used = 0, max = 0;

		cache_usage(d->cache, &used, &max);
		metric_u64(f, "meshfs_cache_used_bytes", "gauge",
			   "Bytes of other hosts' versions cached here.", used);
		metric_u64(f, "meshfs_cache_max_bytes", "gauge",
			   "The cache's size limit in bytes (0 = none).", max);
	}
	if (d->peers)
		write_peer_metrics(d, f);
	metric_u64(f, "meshfs_uptime_seconds", "gauge", "Seconds since the daemon started.",
		   up > 0 ? (uint64_t)up : 0);
}

static enum MHD_Result route_metrics(struct dataserver *s, struct request *rq,
				     struct MHD_Connection *conn)
{
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);

	if (!f)
		return dataserver_respond_errno(s, rq, conn, -errno);
	write_metrics(s, f);
	if (fclose(f) != 0) {
		free(text);
		return dataserver_respond_errno(s, rq, conn, -ENOMEM);
	}
	return respond_text(s, rq, conn, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8",
			    text, len, NULL, NULL);
}

/* ---- dispatch ---- */

static enum endpoint classify(const char *url)
{
	if (strcmp(url, "/v1/health") == 0)
		return EP_HEALTH;
	if (strcmp(url, "/v1/manifest") == 0)
		return EP_MANIFEST;
	if (strncmp(url, CHUNKS_PREFIX, strlen(CHUNKS_PREFIX)) == 0)
		return EP_CHUNKS;
	if (strncmp(url, FILES_PREFIX, strlen(FILES_PREFIX)) == 0)
		return EP_FILES;
	if (strcmp(url, "/v1/notify") == 0)
		return EP_NOTIFY;
	if (strcmp(url, "/metrics") == 0)
		return EP_METRICS;
	return EP_OTHER;
}

/*
 * What to do once the headers are in: 401 without the token (except GET /v1/health), 405 for
 * a method the endpoint does not take, 413 for a notify body announced too large. These are
 * queued at once, so an unwanted body is never read (MHD closes such a connection after the
 * response). Anything else returns MHD_YES and is answered when the request is complete.
 */
static enum MHD_Result start_request(struct dataserver *s, struct request *rq,
				     struct MHD_Connection *conn, const char *method)
{
	bool get = rq->head || strcmp(method, MHD_HTTP_METHOD_GET) == 0;
	bool post = strcmp(method, MHD_HTTP_METHOD_POST) == 0;
	const char *clen;

	if (!(rq->ep == EP_HEALTH && get) && !authorized(s, conn))
		return dataserver_respond_error(s, rq, conn, MHD_HTTP_UNAUTHORIZED, "unauthorized",
						MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
	if (rq->ep == EP_OTHER)
		return MHD_YES;
	if (rq->ep == EP_NOTIFY ? !post : !get)
		return dataserver_respond_error(s, rq, conn, MHD_HTTP_METHOD_NOT_ALLOWED,
						"method not allowed", MHD_HTTP_HEADER_ALLOW,
						rq->ep == EP_NOTIFY ? "POST" : "GET, HEAD");
	clen = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
					   MHD_HTTP_HEADER_CONTENT_LENGTH);
	if (rq->ep == EP_NOTIFY && clen && strtoull(clen, NULL, 10) > NOTIFY_MAX_BODY)
		return dataserver_respond_error(s, rq, conn, MHD_HTTP_CONTENT_TOO_LARGE,
						"body too large", NULL, NULL);
	return MHD_YES;
}

/*
 * The access handler, called at least twice per request: once when the headers are in
 * (start_request), then for each piece of body, then with *upload_data_size == 0 when the
 * request is complete, which is when accepted requests are answered (keeping the connection
 * reusable). A body sent where none is expected is read and dropped.
 */
static enum MHD_Result handle_request(void *cls, struct MHD_Connection *conn, const char *url,
				      const char *method, const char *version,
				      const char *upload_data, size_t *upload_data_size,
				      void **con_cls)
{
	struct dataserver *s = cls;
	struct request *rq = *con_cls;

	if (!rq) {
		rq = calloc(1, sizeof(*rq));
		if (!rq)
			return MHD_NO;
		*con_cls = rq;
		rq->ep = classify(url);
		rq->head = strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;
		return start_request(s, rq, conn, method);
	}
	if (*upload_data_size) {
		take_body(rq, upload_data, *upload_data_size);
		*upload_data_size = 0;
		return MHD_YES;
	}
	switch (rq->ep) {
	case EP_HEALTH:
		return route_health(s, rq, conn);
	case EP_MANIFEST:
		return route_manifest(s, rq, conn);
	case EP_CHUNKS:
		return dataserver_route_chunks(s, rq, conn, url + strlen(CHUNKS_PREFIX));
	case EP_FILES:
		return dataserver_route_files(s, rq, conn, url + strlen(FILES_PREFIX));
	case EP_NOTIFY:
		return route_notify(s, rq, conn);
	case EP_METRICS:
		return route_metrics(s, rq, conn);
	default:
		return dataserver_respond_error(s, rq, conn, MHD_HTTP_NOT_FOUND, "not found", NULL,
						NULL);
	}
}

/* The request is over (answered, failed or abandoned): counts its body bytes and frees it. */
static void request_done(void *cls, struct MHD_Connection *conn, void **con_cls,
			 enum MHD_RequestTerminationCode toe)
{
	struct dataserver *s = cls;
	struct request *rq = *con_cls;

	if (!rq)
		return;
	if (rq->answered && toe == MHD_REQUEST_TERMINATED_COMPLETED_OK && !rq->streamed)
		count_add(&s->bytes_sent, rq->body_out);
	else if (rq->answered && toe != MHD_REQUEST_TERMINATED_COMPLETED_OK &&
		 toe != MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN)
		count_add(&s->errors, 1);
	free(rq->body);
	free(rq);
	*con_cls = NULL;
}

/* ---- the listening socket ---- */

static bool is_loopback(const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;

		return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
	}
	if (sa->sa_family == AF_INET6) {
		const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;

		return IN6_IS_ADDR_LOOPBACK(a) ||
		       (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
	}
	return false;
}

static void addr_text(const struct sockaddr *sa, socklen_t len, char *buf, size_t buflen)
{
	char host[INET6_ADDRSTRLEN] = "?", port[8] = "?";

	getnameinfo(sa, len, host, sizeof(host), port, sizeof(port),
		    NI_NUMERICHOST | NI_NUMERICSERV);
	snprintf(buf, buflen, sa->sa_family == AF_INET6 ? "[%s]:%s" : "%s:%s", host, port);
}

/* Resolves @host for a passive TCP socket on @port: numeric first, then as a name. */
static int resolve(const char *host, int port, struct addrinfo **res)
{
	struct addrinfo hints = {
		.ai_family = AF_UNSPEC,
		.ai_socktype = SOCK_STREAM,
		.ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV,
	};
	char portstr[8];
	int rc;

	if (strcmp(host, "localhost") == 0)
		host = "127.0.0.1";
	snprintf(portstr, sizeof(portstr), "%d", port);
	rc = getaddrinfo(host, portstr, &hints, res);
	if (rc == EAI_NONAME) {
		hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV | AI_ADDRCONFIG;
		rc = getaddrinfo(host, portstr, &hints, res);
	}
	if (rc != 0) {
		log_msg(LOG_ERR, "data server: cannot resolve listen address '%s': %s", host,
			rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc));
		return -EINVAL;
	}
	return 0;
}

/*
 * Binds and listens on cfg->listen_host:listen_port. Returns 0 and the socket in *fd, or
 * -errno of the failed bind (-EADDRINUSE for a taken port), logged with the address.
 */
static int bind_listen(const struct mfs_config *cfg, int *fd_out)
{
	struct addrinfo *res = NULL;
	char where[INET6_ADDRSTRLEN + 16];
	int fd = -1, ret;
	const int on = 1;

	if (cfg->listen_port < 0 || cfg->listen_port > 65535) {
		log_msg(LOG_ERR, "data server: bad listen port %d", cfg->listen_port);
		ret = -EINVAL;
		goto out;
	}
	ret = resolve(cfg->listen_host ? cfg->listen_host : "127.0.0.1", cfg->listen_port, &res);
	if (ret < 0)
		goto out;
	ret = -EADDRNOTAVAIL;
	for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
		addr_text(ai->ai_addr, ai->ai_addrlen, where, sizeof(where));
		if (!cfg->token && !is_loopback(ai->ai_addr)) {
			log_msg(LOG_ERR, "data server: refusing to listen on %s without a "
				"cluster_token_file (required for any non-loopback listen)", where);
			ret = -EINVAL;
			continue;
		}
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
			    ai->ai_protocol);
		if (fd < 0) {
			ret = -errno;
			log_msg(LOG_ERR, "data server: socket for %s: %s", where, strerror(errno));
			continue;
		}
		if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) < 0 ||
		    bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, DS_BACKLOG) < 0) {
			ret = -errno;
			/* The caller reports the failure to the user; this is the detail. */
			log_msg(LOG_DEBUG, "data server: cannot listen on %s: %s", where,
				strerror(errno));
			close(fd);
			fd = -1;
			continue;
		}
		log_msg(LOG_INFO, "data server listening on %s", where);
		ret = 0;
		break;
	}
	if (ret == 0) {
		*fd_out = fd;
		fd = -1;
	}
out:
	if (fd >= 0)
		close(fd);
	if (res)
		freeaddrinfo(res);
	return ret;
}

static void free_server(struct dataserver *s)
{
	if (s->expected_auth)
		explicit_bzero(s->expected_auth, s->expected_len);
	free(s->expected_auth);
	free(s);
}

/*
 * Binds cfg->listen_host:listen_port and starts MHD's thread pool. Returns 0 and *out
 * (release with dataserver_stop), -EADDRINUSE when the port is taken, other -errno otherwise;
 * the reason is logged.
 */
int dataserver_start(struct daemon *d, struct dataserver **out)
{
	const struct mfs_config *cfg = d->cfg;
	struct dataserver *s = calloc(1, sizeof(*s));
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;
	struct stat before, after;
	int fd = -1, ret;

	if (!s)
		return -ENOMEM;
	s->d = d;
	if (cfg->token) {
		if (asprintf(&s->expected_auth, "Bearer %s", cfg->token) < 0) {
			s->expected_auth = NULL;
			ret = -ENOMEM;
			goto out;
		}
		s->expected_len = strlen(s->expected_auth);
	}
	ret = bind_listen(cfg, &fd);
	if (ret < 0)
		goto out;
	flags |= MHD_is_feature_supported(MHD_FEATURE_EPOLL) == MHD_YES ? MHD_USE_EPOLL
								   : MHD_USE_POLL;
	if (fstat(fd, &before) < 0) {
		ret = -errno;
		goto out;
	}
	s->mhd = MHD_start_daemon(flags, 0, NULL, NULL, handle_request, s,
				  MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
				  MHD_OPTION_LISTEN_SOCKET, fd,
				  MHD_OPTION_THREAD_POOL_SIZE, (unsigned)DS_THREADS,
				  MHD_OPTION_CONNECTION_LIMIT, (unsigned)DS_MAX_CONNECTIONS,
				  MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)DS_MAX_PER_IP,
				  MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)DS_CONNECTION_TIMEOUT_S,
				  MHD_OPTION_NOTIFY_COMPLETED, request_done, s,
				  MHD_OPTION_UNESCAPE_CALLBACK, keep_escaped, NULL,
				  MHD_OPTION_END);
	if (!s->mhd) {
		log_msg(LOG_ERR, "data server: libmicrohttpd failed to start");
		ret = -EIO;
		/* Depending on where it failed, MHD may already have closed the socket: close
		 * it only if the descriptor still refers to the same socket. */
		if (fstat(fd, &after) < 0 || after.st_ino != before.st_ino ||
		    after.st_dev != before.st_dev)
			fd = -1;
		goto out;
	}
	fd = -1;	/* MHD owns it now and closes it in MHD_stop_daemon */
	*out = s;
	s = NULL;
out:
	if (fd >= 0)
		close(fd);
	if (s)
		free_server(s);
	return ret;
}

/* Stops accepting, finishes the MHD threads (open connections are closed) and frees @s. */
void dataserver_stop(struct dataserver *s)
{
	if (!s)
		return;
	if (s->mhd)
		MHD_stop_daemon(s->mhd);
	free_server(s);
}
