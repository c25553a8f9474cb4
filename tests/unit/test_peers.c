/*
 * test_peers — catalog_peers.c against a real SQLite file, and the manifest pull client
 * (peers.c) against small HTTP servers in this process (libmicrohttpd on 127.0.0.1, a free port
 * each) that serve canned NDJSON manifests and record what they were asked.
 *
 * The servers play the hosts a node meets on a bad day: one that answers 401, a port where
 * nothing listens, a socket that accepts connections and never answers, one whose manifest
 * has bad entries, malformed lines or no trailer, one whose seq went backwards (a new catalog),
 * and one with a 100k-entry manifest streamed from a generator, during which the heap in use is
 * sampled to show that the client's memory does not grow with the manifest. Every wait has a
 * deadline.
 */
#include "sync/peers.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ftw.h>
#include <malloc.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "sync/catalog.h"
#include "sync/log.h"
#include "sync/util.h"
#include "tests/unit/logcapture.h"
#include "tests/unit/rawsql.h"
#include "tests/unit/deadport.h"
#include "tests/unit/testutil.h"

#define MS 1000000LL
#define DEADLINE_MS 10000
#define MIB ((size_t)1 << 20)

static char tmpdir[] = "/tmp/meshfs-test-peers-XXXXXX";

/* Polls @cond every 5 ms until it holds or @ms pass; the value of the last evaluation. */
#define WAIT_FOR(cond, ms)                                                                  \
	({                                                                                  \
		int64_t wf_deadline = mono_ns() + (int64_t)(ms) * MS;                       \
		bool wf_ok;                                                                 \
		while (!(wf_ok = (cond)) && mono_ns() < wf_deadline)                       \
			usleep(5000);                                                       \
		wf_ok;                                                                      \
	})

/* ---- log capture ---- */

static int cap_count(const char *needle)
{
	int n = 0;

	pthread_mutex_lock(&cap_lock);
	for (const char *s = cap_buf; (s = strstr(s, needle)); s++)
		n++;
	pthread_mutex_unlock(&cap_lock);
	return n;
}

/* ---- manifest lines ---- */

static char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static char *xasprintf(const char *fmt, ...)
{
	va_list ap;
	char *s;

	va_start(ap, fmt);
	if (vasprintf(&s, fmt, ap) < 0)
		abort();
	va_end(ap);
	return s;
}

/* A live entry whose hash is derived from @tag (so versions differ when tags do). */
static char *live_line(long long seq, const char *cat, const char *path, long long size,
		       unsigned tag)
{
	return xasprintf("{\"seq\":%lld,\"category\":\"%s\",\"path\":\"%s\",\"size\":%lld,"
			 "\"mtime_ns\":1795938594123456789,\"hash\":\"xxh3-128:%016x%016x\","
			 "\"origin\":\"h1\"}",
			 seq, cat, path, size, 0xabcdu, tag);
}

static char *del_line(long long seq, const char *cat, const char *path)
{
	return xasprintf("{\"seq\":%lld,\"category\":\"%s\",\"path\":\"%s\",\"deleted\":true}",
			 seq, cat, path);
}

/* ---- the test servers ---- */

#define SRV_MAX_LINES 64

struct srv {
	char node[32];
	struct MHD_Daemon *mhd;
	int port;
	pthread_mutex_t lock;
	/* protected by lock: */
	unsigned status;		/* 0: answer normally */
	char token[32];			/* required bearer token; "" = none */
	long long hdr_seq;
	char *lines[SRV_MAX_LINES];	/* entry lines, sent when line_seq > since */
	long long line_seq[SRV_MAX_LINES];
	size_t n_lines;
	bool no_trailer;
	char *header_override;
	size_t big_n;			/* > 0: a generated manifest of this many entries */
	int manifest_requests;
	long long sinces[32];		/* the since= of each manifest request */
	int notifies;
	char last_notify[256];
	char last_auth[128];
};

/* Generator state of a big manifest, streamed without building it in memory. */
struct gen {
	char node[32];
	size_t n, next;			/* entries; the next to produce (0 = header) */
	bool done;
	char line[600];
	size_t len, off;
};

static void gen_make_line(struct gen *g)
{
#define X10 "xxxxxxxxxx"
#define X80 X10 X10 X10 X10 X10 X10 X10 X10
	static const char pad[] = X80 X80 X80 X80;
	int n;

	if (g->next == 0)
		n = snprintf(g->line, sizeof(g->line),
			     "{\"manifest\":1,\"node\":\"%s\",\"seq\":%zu,\"since\":0}\n", g->node,
			     g->n);
	else if (g->next <= g->n)
		n = snprintf(g->line, sizeof(g->line),
			     "{\"seq\":%zu,\"category\":\"games\",\"path\":\"d%03zu/%s_%07zu.db\","
			     "\"size\":%zu,\"mtime_ns\":1795938594123456789,"
			     "\"hash\":\"xxh3-128:%032zx\",\"origin\":\"%s\"}\n",
			     g->next, g->next % 100, pad, g->next, g->next * 7, g->next, g->node);
	else
		n = snprintf(g->line, sizeof(g->line), "{\"end\":true,\"seq\":%zu,\"count\":%zu}\n",
			     g->n, g->n);
	g->len = (size_t)n;
	g->off = 0;
	g->next++;
}

static ssize_t gen_read(void *cls, uint64_t pos, char *buf, size_t max)
{
	struct gen *g = cls;
	size_t out = 0;

	while (out < max) {
		size_t take;

		if (g->off == g->len) {
			if (g->next > g->n + 1)
				break;
			gen_make_line(g);
		}
		take = g->len - g->off < max - out ? g->len - g->off : max - out;
		memcpy(buf + out, g->line + g->off, take);
		g->off += take;
		out += take;
	}
	return out ? (ssize_t)out : MHD_CONTENT_READER_END_OF_STREAM;
}

static void gen_free(void *cls)
{
	free(cls);
}

/* The canned manifest for @since. Lock held. */
static char *srv_body(struct srv *s, long long since, size_t *len)
{
	char *body = NULL;
	FILE *f = open_memstream(&body, len);
	size_t count = 0;

	if (!f)
		abort();
	if (s->header_override)
		fprintf(f, "%s\n", s->header_override);
	else
		fprintf(f, "{\"manifest\":1,\"node\":\"%s\",\"seq\":%lld,\"since\":%lld}\n",
			s->node, s->hdr_seq, since);
	for (size_t i = 0; i < s->n_lines; i++) {
		if (s->line_seq[i] <= since)
			continue;
		/* Without a trailer the body ends like a cut connection: mid-line. */
		fprintf(f, "%s%s", s->lines[i], s->no_trailer && i + 1 == s->n_lines ? "" : "\n");
		count++;
	}
	if (!s->no_trailer)
		fprintf(f, "{\"end\":true,\"seq\":%lld,\"count\":%zu}\n", s->hdr_seq, count);
	fclose(f);
	return body;
}

static enum MHD_Result srv_reply(struct MHD_Connection *conn, unsigned code, char *body,
				 size_t len)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
	enum MHD_Result ret;

	ret = MHD_queue_response(conn, code, r);
	MHD_destroy_response(r);
	return ret;
}

struct upload {
	char buf[256];
	size_t len;
};

static enum MHD_Result srv_handler(void *cls, struct MHD_Connection *conn, const char *url,
				   const char *method, const char *version,
				   const char *upload_data, size_t *upload_size, void **con_cls)
{
	struct srv *s = cls;
	struct upload *up = *con_cls;
	const char *auth, *since_s;
	long long since;
	struct MHD_Response *r;
	enum MHD_Result ret;
	struct gen *g;
	char expected[64];
	char *body;
	size_t len;
	unsigned status;

	if (strcmp(method, "POST") == 0 && !up) {
		up = calloc(1, sizeof(*up));
		*con_cls = up;
		return up ? MHD_YES : MHD_NO;
	}
	if (up && *upload_size) {
		size_t n = *upload_size < sizeof(up->buf) - 1 - up->len ?
				   *upload_size : sizeof(up->buf) - 1 - up->len;

		memcpy(up->buf + up->len, upload_data, n);
		up->len += n;
		*upload_size = 0;
		return MHD_YES;
	}
	auth = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization");
	pthread_mutex_lock(&s->lock);
	snprintf(s->last_auth, sizeof(s->last_auth), "%s", auth ? auth : "");
	snprintf(expected, sizeof(expected), "Bearer %s", s->token);
	status = s->status;
	if (s->token[0] && (!auth || strcmp(auth, expected) != 0))
		status = 401;
	if (strcmp(url, "/v1/notify") == 0 && up) {
		s->notifies++;
		snprintf(s->last_notify, sizeof(s->last_notify), "%.*s", (int)up->len, up->buf);
		pthread_mutex_unlock(&s->lock);
		return srv_reply(conn, status ? status : 204, NULL, 0);
	}
	if (strcmp(url, "/v1/manifest") != 0) {
		pthread_mutex_unlock(&s->lock);
		return srv_reply(conn, 404, NULL, 0);
	}
	since_s = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "since");
	since = since_s ? atoll(since_s) : -1;
	if (s->manifest_requests < (int)ARRAY_SIZE(s->sinces))
		s->sinces[s->manifest_requests] = since;
	s->manifest_requests++;
	if (status) {
		pthread_mutex_unlock(&s->lock);
		return srv_reply(conn, status, strdup("{\"error\":\"no\"}"), 14);
	}
	if (s->big_n) {
		g = calloc(1, sizeof(*g));
		if (!g)
			abort();
		snprintf(g->node, sizeof(g->node), "%s", s->node);
		g->n = s->big_n;
		pthread_mutex_unlock(&s->lock);
		r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 32 * 1024, gen_read, g,
						      gen_free);
		ret = MHD_queue_response(conn, 200, r);
		MHD_destroy_response(r);
		return ret;
	}
	body = srv_body(s, since, &len);
	pthread_mutex_unlock(&s->lock);
	return srv_reply(conn, 200, body, len);
}

static void srv_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
			  enum MHD_RequestTerminationCode toe)
{
	free(*con_cls);
	*con_cls = NULL;
}

static struct srv *srv_start(const char *node)
{
	struct srv *s = calloc(1, sizeof(*s));
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = 0 };
	const union MHD_DaemonInfo *info;

	if (!s)
		abort();
	snprintf(s->node, sizeof(s->node), "%s", node);
	pthread_mutex_init(&s->lock, NULL);
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	s->mhd = MHD_start_daemon(MHD_USE_AUTO_INTERNAL_THREAD, 0, NULL, NULL, srv_handler, s,
				  MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sin,
				  MHD_OPTION_NOTIFY_COMPLETED, srv_completed, s,
				  MHD_OPTION_CONNECTION_TIMEOUT, 30u, MHD_OPTION_END);
	if (!s->mhd)
		abort();
	info = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_BIND_PORT);
	s->port = info ? info->port : 0;
	if (!s->port)
		abort();
	return s;
}

static void srv_clear_lines(struct srv *s)
{
	for (size_t i = 0; i < s->n_lines; i++)
		free(s->lines[i]);
	s->n_lines = 0;
}

static void srv_stop(struct srv *s)
{
	if (!s)
		return;
	MHD_stop_daemon(s->mhd);
	srv_clear_lines(s);
	free(s->header_override);
	pthread_mutex_destroy(&s->lock);
	free(s);
}

/* Adds an entry line sent for since < @seq; takes @text. */
static void srv_add(struct srv *s, long long seq, char *text)
{
	pthread_mutex_lock(&s->lock);
	if (s->n_lines == SRV_MAX_LINES)
		abort();
	s->line_seq[s->n_lines] = seq;
	s->lines[s->n_lines++] = text;
	pthread_mutex_unlock(&s->lock);
}

static void srv_set_seq(struct srv *s, long long seq)
{
	pthread_mutex_lock(&s->lock);
	s->hdr_seq = seq;
	pthread_mutex_unlock(&s->lock);
}

static int srv_requests(struct srv *s)
{
	int n;

	pthread_mutex_lock(&s->lock);
	n = s->manifest_requests;
	pthread_mutex_unlock(&s->lock);
	return n;
}

/* The since= of manifest request @i (0-based), -2 if there was none. */
static long long srv_since(struct srv *s, int i)
{
	long long v = -2;

	pthread_mutex_lock(&s->lock);
	if (i >= 0 && i < s->manifest_requests && i < (int)ARRAY_SIZE(s->sinces))
		v = s->sinces[i];
	pthread_mutex_unlock(&s->lock);
	return v;
}

/* A socket that listens (the kernel completes handshakes) but is never accepted from. */
static int stalled_listener(int *port)
{
	struct sockaddr_in sin = { .sin_family = AF_INET };
	socklen_t sl = sizeof(sin);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0 || listen(fd, 16) < 0 ||
	    getsockname(fd, (struct sockaddr *)&sin, &sl) < 0)
		abort();
	*port = ntohs(sin.sin_port);
	return fd;
}

/* ---- the node under test ---- */

struct rec {
	pthread_mutex_t lock;
	struct catalog *cat;
	size_t puts, deletes, resets;
	size_t cat_errors;		/* catalog calls from a callback that failed */
	size_t bad_puts;		/* puts whose entry did not look right */
	char last_put[256];
	char last_delete[256];
};

static void on_put(void *arg, size_t host_idx, size_t cat_idx, const struct cat_entry *e)
{
	struct rec *r = arg;
	int64_t seq = 0;
	/* The catalog must not be locked here: this call fails with -EDEADLK if it is. */
	int ret = catalog_host_get(r->cat, e->host, &seq, NULL);

	pthread_mutex_lock(&r->lock);
	r->puts++;
	if (ret)
		r->cat_errors++;
	if (!e->host || !e->origin || !e->category || e->deleted || e->confirmed_at <= 0 ||
	    e->seq > seq)
		r->bad_puts++;
	snprintf(r->last_put, sizeof(r->last_put), "%zu:%s:%s", host_idx, e->category, e->path);
	pthread_mutex_unlock(&r->lock);
}

static void on_delete(void *arg, size_t host_idx, size_t cat_idx, const char *path)
{
	struct rec *r = arg;

	pthread_mutex_lock(&r->lock);
	r->deletes++;
	snprintf(r->last_delete, sizeof(r->last_delete), "%zu:%zu:%s", host_idx, cat_idx, path);
	pthread_mutex_unlock(&r->lock);
}

static void on_reset(void *arg, size_t host_idx)
{
	struct rec *r = arg;

	pthread_mutex_lock(&r->lock);
	r->resets++;
	pthread_mutex_unlock(&r->lock);
}

static const struct peers_ops rec_ops = {
	.remote_put = on_put,
	.remote_delete = on_delete,
	.host_reset = on_reset,
};

static size_t rec_get(struct rec *r, const size_t *field)
{
	size_t v;

	pthread_mutex_lock(&r->lock);
	v = *field;
	pthread_mutex_unlock(&r->lock);
	return v;
}

#define REC(env, field) rec_get(&(env)->rec, &(env)->rec.field)

#define MAX_HOSTS 8

struct env {
	char db[256];
	struct cfg_host hosts[MAX_HOSTS];
	struct mfs_config cfg;
	struct catalog *cat;
	struct rec rec;
	struct peers *p;
};

static int env_counter;

static void env_init(struct env *env)
{
	static const char *names[] = { "games", "models", "training" };

	memset(env, 0, sizeof(*env));
	pthread_mutex_init(&env->rec.lock, NULL);
	snprintf(env->db, sizeof(env->db), "%s/catalog-%d.db", tmpdir, ++env_counter);
	env->hosts[0].name = (char *)"n0";
	env->hosts[0].address = (char *)"127.0.0.1";
	env->hosts[0].data_server_port = 1;
	env->hosts[0].active = true;
	env->cfg.node = (char *)"n0";
	env->cfg.self = &env->hosts[0];
	env->cfg.hosts = env->hosts;
	env->cfg.n_hosts = 1;
	env->cfg.token = (char *)"secret";
	for (size_t i = 0; i < 3; i++) {
		env->cfg.categories[i].name = (char *)names[i];
		env->cfg.categories[i].path = (char *)names[i];
	}
	env->cfg.n_categories = 3;
	if (catalog_open(env->db, &env->cat) != 0 || catalog_meta_set(env->cat, "node", "n0"))
		abort();
	env->rec.cat = env->cat;
}

/* Adds host @name at 127.0.0.1:@port; returns its index. */
static size_t env_host(struct env *env, const char *name, int port)
{
	struct cfg_host *h = &env->hosts[env->cfg.n_hosts];

	if (env->cfg.n_hosts == MAX_HOSTS)
		abort();
	h->name = (char *)name;
	h->address = (char *)"127.0.0.1";
	h->data_server_port = port;
	h->active = true;
	return env->cfg.n_hosts++;
}

static void env_start(struct env *env, int interval_ms)
{
	CHECK_EQ_INT(peers_start(&env->cfg, env->cat, &rec_ops, &env->rec, interval_ms, &env->p),
		     0);
	if (!env->p)
		abort();
}

static void env_free(struct env *env)
{
	peers_stop(env->p);
	catalog_close(env->cat);
	pthread_mutex_destroy(&env->rec.lock);
}

static struct peer_status status_of(struct env *env, size_t idx)
{
	struct peer_status st;

	peers_status(env->p, idx, &st);
	return st;
}

static int64_t position(struct env *env, const char *host)
{
	int64_t seq = -1;

	if (catalog_host_get(env->cat, host, &seq, NULL) != 0)
		return -1;
	return seq;
}

static uint64_t live_files(struct catalog *cat, const char *host)
{
	uint64_t files = UINT64_MAX;

	if (catalog_totals(cat, host, &files, NULL) != 0)
		return UINT64_MAX;
	return files;
}

struct got {
	bool found;
	bool deleted;
	int64_t seq;
	uint64_t size;
	int64_t confirmed_at;
	struct hash128 hash;
	char origin[64];
};

static void got_cb(void *arg, const struct cat_entry *e)
{
	struct got *g = arg;

	g->found = true;
	g->deleted = e->deleted;
	g->seq = e->seq;
	g->size = e->size;
	g->confirmed_at = e->confirmed_at;
	g->hash = e->hash;
	snprintf(g->origin, sizeof(g->origin), "%s", e->origin);
}

static struct got lookup(struct catalog *cat, const char *host, const char *category,
			 const char *path)
{
	struct got g = { 0 };

	catalog_get(cat, host, category, path, got_cb, &g);
	return g;
}

/* ---- catalog_peers.c ---- */

static struct cat_entry remote(const char *host, const char *category, const char *path,
			       int64_t seq, uint64_t size, uint64_t tag)
{
	struct cat_entry e = { .host = host, .category = category, .path = path, .seq = seq,
			       .size = size, .mtime_ns = 1000 + seq, .origin = host };

	e.hash.hi = 0xabcd;
	e.hash.lo = tag;
	return e;
}

static struct cat_entry tomb(const char *host, const char *category, const char *path,
			     int64_t seq)
{
	struct cat_entry e = { .host = host, .category = category, .path = path, .seq = seq,
			       .deleted = true };

	return e;
}

static int count_cb(void *arg, const struct cat_entry *e)
{
	size_t *counts = arg;

	if (strcmp(e->host, "n0") == 0 || e->deleted)
		counts[3]++; /* must never be seen */
	else if (strcmp(e->host, "h1") == 0)
		counts[0]++;
	else if (strcmp(e->host, "h2") == 0)
		counts[1]++;
	else
		counts[2]++;
	return 0;
}

static int stop_cb(void *arg, const struct cat_entry *e)
{
	(*(int *)arg)++;
	return 42;
}

static void test_catalog_apply(void)
{
	struct env env;
	struct cat_entry batch[4];
	struct hash128 *chunks = NULL;
	struct cat_entry own;
	size_t n_chunks = 0, counts[4] = { 0 };
	int64_t seq = -1, seen = -1, own_seq = 0;
	struct got g;
	int calls = 0;

	env_init(&env);
	/* A host never pulled is at 0, never seen. */
	CHECK_EQ_INT(catalog_host_get(env.cat, "h1", &seq, &seen), 0);
	CHECK_EQ_INT(seq, 0);
	CHECK_EQ_INT(seen, 0);

	batch[0] = remote("h1", "games", "a.db", 1, 100, 1);
	batch[1] = remote("h1", "games", "dir/b.db", 2, 200, 2);
	batch[2] = remote("h1", "models", "m.pth", 3, 300, 3);
	batch[2].origin = "h9";
	CHECK_EQ_INT(catalog_apply_remote(env.cat, "h1", batch, 3, 5, 1700000000), 0);
	CHECK_EQ_INT(catalog_host_get(env.cat, "h1", &seq, &seen), 0);
	CHECK_EQ_INT(seq, 5);
	CHECK_EQ_INT(seen, 1700000000);
	CHECK_EQ_INT(live_files(env.cat, "h1"), 3);
	g = lookup(env.cat, "h1", "models", "m.pth");
	CHECK(g.found && !g.deleted);
	CHECK_EQ_INT(g.seq, 3);
	CHECK_EQ_INT(g.size, 300);
	CHECK_EQ_INT(g.confirmed_at, 1700000000);
	CHECK_EQ_INT(g.hash.lo, 3);
	CHECK_EQ_STR(g.origin, "h9");

	/* Chunks stay with the same content, go with new content. */
	CHECK_EQ_INT(raw_int(env.db, "INSERT INTO chunks (entry_id, idx, hash) SELECT id, 0, "
				     "zeroblob(16) FROM entries WHERE host = 'h1' AND "
				     "path = 'a.db' RETURNING 1"), 1);
	CHECK_EQ_INT(catalog_get_chunks(env.cat, "h1", "games", "a.db", &chunks, &n_chunks), 0);
	CHECK_EQ_INT(n_chunks, 1);
	free(chunks);
	chunks = NULL;
	batch[0] = remote("h1", "games", "a.db", 6, 100, 1); /* touched: same content */
	CHECK_EQ_INT(catalog_apply_remote(env.cat, "h1", batch, 1, 6, 1700000001), 0);
	CHECK_EQ_INT(catalog_get_chunks(env.cat, "h1", "games", "a.db", &chunks, &n_chunks), 0);
	CHECK_EQ_INT(n_chunks, 1);
	free(chunks);
	chunks = NULL;
	batch[0] = remote("h1", "games", "a.db", 7, 150, 77); /* new version */
	CHECK_EQ_INT(catalog_apply_remote(env.cat, "h1", batch, 1, 7, 1700000002), 0);
	CHECK_EQ_INT(catalog_get_chunks(env.cat, "h1", "games", "a.db", &chunks, &n_chunks), 0);
	CHECK_EQ_INT(n_chunks, 0);
	free(chunks);
	chunks = NULL;
	g = lookup(env.cat, "h1", "games", "a.db");
	CHECK_EQ_INT(g.seq, 7);
	CHECK_EQ_INT(g.size, 150);
	CHECK_EQ_INT(g.hash.lo, 77);

	/* Deletes: a known entry becomes a tombstone, an unknown one is ignored. */
	batch[0] = tomb("h1", "games", "dir/b.db", 8);
	batch[1] = tomb("h1", "games", "never.db", 9);
	CHECK_EQ_INT(catalog_apply_remote(env.cat, "h1", batch, 2, 9, 1700000003), 0);
	g = lookup(env.cat, "h1", "games", "dir/b.db");
	CHECK(g.found && g.deleted);
	CHECK_EQ_INT(g.seq, 8);
	CHECK(!lookup(env.cat, "h1", "games", "never.db").found);
	CHECK_EQ_INT(live_files(env.cat, "h1"), 2);
	CHECK_EQ_INT(position(&env, "h1"), 9);
	/* A deleted entry that comes back is live again. */
	batch[0] = remote("h1", "games", "dir/b.db", 10, 201, 5);
	CHECK_EQ_INT(catalog_apply_remote(env.cat, "h1", batch, 1, 10, 1700000004), 0);
	g = lookup(env.cat, "h1", "games", "dir/b.db");
	CHECK(g.found && !g.deleted);
	CHECK_EQ_INT(g.size, 201);
	/* No entries: only the position and last_seen move. */
	CHECK_EQ_INT(catalog_apply_remote(env.cat, "h1", NULL, 0, 12, 1700000005), 0);
	CHECK_EQ_INT(catalog_host_get(env.cat, "h1", &seq, &seen), 0);
	CHECK_EQ_INT(seq, 12);
	CHECK_EQ_INT(seen, 1700000005);

	/* Refusals: one bad entry and nothing of the batch is applied. */
	cap_reset();
	batch[0] = remote("h2", "games", "ok.db", 1, 1, 1);
	batch[1] = remote("h2", "games", "../escape", 2, 1, 1);
	CHECK_EQ_INT(catalog_apply_remote(env.cat, "h2", batch, 2, 2, 1), -EINVAL);
	batch[1] = remote("h1", "games", "wrong-host.db", 2, 1, 1);
	CHECK_EQ_INT(catalog_apply_remote(env.cat, "h2", batch, 2, 2, 1), -EINVAL);
	batch[1] = remote("h2", "games", "beyond.db", 3, 1, 1);
	CHECK_EQ_INT(catalog_apply_remote(env.cat, "h2", batch, 2, 2, 1), -EINVAL);
	batch[1] = remote("h2", "games", "zero.db", 0, 1, 1);
	CHECK_EQ_INT(catalog_apply_remote(env.cat, "h2", batch, 2, 2, 1), -EINVAL);
	batch[1] = remote("h2", "games", "no-origin.db", 2, 1, 1);
	batch[1].origin = "";
	CHECK_EQ_INT(catalog_apply_remote(env.cat, "h2", batch, 2, 2, 1), -EINVAL);
	batch[1] = remote("h2", "a/b", "bad-category.db", 2, 1, 1);
	CHECK_EQ_INT(catalog_apply_remote(env.cat, "h2", batch, 2, 2, 1), -EINVAL);
	CHECK_EQ_INT(catalog_apply_remote(env.cat, "h2", batch, 1, -1, 1), -EINVAL);
	CHECK_EQ_INT(live_files(env.cat, "h2"), 0);
	CHECK_EQ_INT(position(&env, "h2"), 0);
	CHECK(cap_has("refusing h2's batch"));

	/* This node's own host is never a remote one. */
	own = remote("n0", "games", "own.db", 0, 5, 5);
	CHECK_EQ_INT(catalog_publish_local(env.cat, &own, (struct hash128[1]){ { 0, 0 } }, 1,
					   &own_seq), 0);
	batch[0] = remote("n0", "games", "own.db", own_seq + 1, 6, 6);
	CHECK_EQ_INT(catalog_apply_remote(env.cat, "n0", batch, 1, own_seq + 1, 1), -EINVAL);
	CHECK_EQ_INT(catalog_reset_host(env.cat, "n0"), -EINVAL);
	CHECK(cap_has("refused for this node's own host n0"));
	g = lookup(env.cat, "n0", "games", "own.db");
	CHECK(g.found && g.size == 5);
	CHECK_EQ_INT(live_files(env.cat, "n0"), 1);

	/* foreach_remote: every live entry of the other hosts, none of this node's. */
	batch[0] = remote("h2", "training", "t.npz", 4, 9, 9);
	batch[1] = tomb("h2", "training", "t-old.npz", 5);
	CHECK_EQ_INT(catalog_apply_remote(env.cat, "h2", batch, 2, 5, 1), 0);
	CHECK_EQ_INT(catalog_foreach_remote(env.cat, "n0", count_cb, counts), 0);
	CHECK_EQ_INT(counts[0], 3);
	CHECK_EQ_INT(counts[1], 1);
	CHECK_EQ_INT(counts[2], 0);
	CHECK_EQ_INT(counts[3], 0);
	CHECK_EQ_INT(catalog_foreach_remote(env.cat, "n0", stop_cb, &calls), 42);
	CHECK_EQ_INT(calls, 1);

	/* reset: h1's entries (and their chunks) go, its position is 0, h2 is untouched. */
	CHECK_EQ_INT(raw_int(env.db, "INSERT INTO chunks (entry_id, idx, hash) SELECT id, 0, "
				     "zeroblob(16) FROM entries WHERE host = 'h1' AND "
				     "path = 'a.db' RETURNING 1"), 1);
	CHECK_EQ_INT(catalog_reset_host(env.cat, "h1"), 0);
	CHECK_EQ_INT(catalog_host_get(env.cat, "h1", &seq, &seen), 0);
	CHECK_EQ_INT(seq, 0);
	CHECK_EQ_INT(seen, 1700000005);
	CHECK_EQ_INT(live_files(env.cat, "h1"), 0);
	CHECK(!lookup(env.cat, "h1", "games", "dir/b.db").found);
	CHECK_EQ_INT(raw_int(env.db, "SELECT count(*) FROM chunks"), 1); /* own.db's */
	CHECK_EQ_INT(live_files(env.cat, "h2"), 1);
	CHECK_EQ_INT(position(&env, "h2"), 5);
	env_free(&env);
}

/* ---- the pull client ---- */

static void test_base_url(void)
{
	struct cfg_host hosts[3] = { { .name = (char *)"a", .address = (char *)"10.0.0.1",
				       .data_server_port = 8766 },
				     { .name = (char *)"b", .address = (char *)"fd7a::1",
				       .data_server_port = 9000 },
				     { .name = (char *)"c" } };
	struct mfs_config cfg = { .hosts = hosts, .n_hosts = 3 };
	char buf[64];

	CHECK_EQ_INT(peers_base_url(&cfg, 0, buf, sizeof(buf)), 0);
	CHECK_EQ_STR(buf, "http://10.0.0.1:8766");
	CHECK_EQ_INT(peers_base_url(&cfg, 1, buf, sizeof(buf)), 0);
	CHECK_EQ_STR(buf, "http://[fd7a::1]:9000");
	CHECK_EQ_INT(peers_base_url(&cfg, 2, buf, sizeof(buf)), -ENOENT);
	CHECK_EQ_INT(peers_base_url(&cfg, 3, buf, sizeof(buf)), -EINVAL);
	CHECK_EQ_INT(peers_base_url(&cfg, 0, buf, 10), -ENAMETOOLONG);
}

static void test_pull_incremental(void)
{
	struct srv *s = srv_start("h1"), *quiet = srv_start("h2");
	struct env env;
	struct peer_status st;
	size_t h1, h2, off, noaddr;
	struct got g;
	int before;

	strcpy(s->token, "secret");
	srv_add(s, 1, live_line(1, "games", "a.db", 10, 1));
	srv_add(s, 2, live_line(2, "games", "sub/b.db", 20, 2));
	srv_add(s, 3, live_line(3, "models", "m.pth", 30, 3));
	srv_add(s, 4, del_line(4, "games", "gone.db"));
	srv_set_seq(s, 5);
	srv_set_seq(quiet, 0);

	env_init(&env);
	h1 = env_host(&env, "h1", s->port);
	h2 = env_host(&env, "h2", quiet->port);
	off = env_host(&env, "off", dead_port());
	env.hosts[off].active = false;
	noaddr = env_host(&env, "noaddr", 1);
	env.hosts[noaddr].address = NULL;
	env_start(&env, 60000);

	/* Inactive and address-less hosts are not waited for. */
	CHECK_EQ_INT(peers_wait_first_pull(env.p, DEADLINE_MS), 0);
	CHECK_EQ_INT(srv_since(s, 0), 0);
	CHECK_EQ_STR(s->last_auth, "Bearer secret");
	CHECK_EQ_INT(position(&env, "h1"), 5);
	CHECK_EQ_INT(live_files(env.cat, "h1"), 3);
	CHECK_EQ_INT(REC(&env, puts), 3);
	CHECK_EQ_INT(REC(&env, deletes), 1);
	CHECK_EQ_INT(REC(&env, cat_errors), 0);
	CHECK_EQ_INT(REC(&env, bad_puts), 0);
	st = status_of(&env, h1);
	CHECK_EQ_INT(st.state, PEER_UP);
	CHECK_EQ_INT(st.last_seq, 5);
	CHECK(st.last_seen > 0);
	CHECK_EQ_INT(st.errors, 0);
	g = lookup(env.cat, "h1", "games", "sub/b.db");
	CHECK(g.found && g.size == 20 && g.seq == 2 && g.hash.lo == 2 && g.hash.hi == 0xabcd);
	CHECK(g.confirmed_at > 0);
	/* An empty manifest is a success too. */
	CHECK_EQ_INT(status_of(&env, h2).state, PEER_UP);
	CHECK_EQ_INT(srv_requests(quiet), 1);
	CHECK_EQ_INT(status_of(&env, off).state, PEER_UNKNOWN);
	CHECK_EQ_INT(status_of(&env, noaddr).state, PEER_UNKNOWN);
	CHECK_EQ_INT(status_of(&env, 0).state, PEER_UNKNOWN);

	/* Changes after 5: an update and a delete; only they are asked for. */
	srv_add(s, 6, live_line(6, "games", "a.db", 11, 66));
	srv_add(s, 7, del_line(7, "games", "sub/b.db"));
	srv_set_seq(s, 7);
	peers_notify(env.p, "h1");
	CHECK(WAIT_FOR(position(&env, "h1") == 7, DEADLINE_MS));
	CHECK(WAIT_FOR(REC(&env, deletes) == 2, DEADLINE_MS));
	CHECK_EQ_INT(srv_since(s, 1), 5);
	CHECK_EQ_INT(REC(&env, puts), 4);
	g = lookup(env.cat, "h1", "games", "a.db");
	CHECK(g.size == 11 && g.seq == 6 && g.hash.lo == 66);
	CHECK(lookup(env.cat, "h1", "games", "sub/b.db").deleted);
	CHECK_EQ_INT(live_files(env.cat, "h1"), 2);
	pthread_mutex_lock(&env.rec.lock);
	CHECK_EQ_STR(env.rec.last_delete, "1:0:sub/b.db");
	pthread_mutex_unlock(&env.rec.lock);
	/* The other host was not asked again. */
	CHECK_EQ_INT(srv_requests(quiet), 1);

	/* Nothing new: one request, nothing applied. */
	before = srv_requests(s);
	peers_notify(env.p, NULL);
	CHECK(WAIT_FOR(srv_requests(s) == before + 1 && srv_requests(quiet) == 2, DEADLINE_MS));
	CHECK_EQ_INT(srv_since(s, before), 7);
	CHECK_EQ_INT(REC(&env, puts), 4);
	CHECK_EQ_INT(status_of(&env, h1).state, PEER_UP);

	/* Announce: POST /v1/notify to every peer, with the token. */
	peers_announce(env.p, 42);
	CHECK(WAIT_FOR(({
		bool got;
		pthread_mutex_lock(&s->lock);
		got = s->notifies == 1;
		pthread_mutex_unlock(&s->lock);
		got;
	}), DEADLINE_MS));
	pthread_mutex_lock(&s->lock);
	CHECK(strstr(s->last_notify, "\"node\":\"n0\"") != NULL);
	CHECK(strstr(s->last_notify, "\"seq\":42") != NULL);
	CHECK_EQ_STR(s->last_auth, "Bearer secret");
	pthread_mutex_unlock(&s->lock);
	CHECK(WAIT_FOR(({
		bool got;
		pthread_mutex_lock(&quiet->lock);
		got = quiet->notifies == 1;
		pthread_mutex_unlock(&quiet->lock);
		got;
	}), DEADLINE_MS));

	/* Transfers: throughput is an EWMA of big enough transfers; failures are errors. */
	peers_record_transfer(env.p, h1, 4 * MIB, 1000 * MS, 0);
	st = status_of(&env, h1);
	CHECK(st.throughput_bps > 4.0 * MIB - 1 && st.throughput_bps < 4.0 * MIB + 1);
	peers_record_transfer(env.p, h1, 8 * MIB, 1000 * MS, 0);
	st = status_of(&env, h1);
	CHECK(st.throughput_bps > 5.2 * MIB - 1 && st.throughput_bps < 5.2 * MIB + 1);
	peers_record_transfer(env.p, h1, 100, 1000 * MS, 0); /* latency, not speed: ignored */
	CHECK(status_of(&env, h1).throughput_bps > 5.2 * MIB - 1);
	peers_record_transfer(env.p, h1, 0, 0, -ECONNRESET);
	st = status_of(&env, h1);
	CHECK_EQ_INT(st.errors, 1);
	CHECK(strstr(st.last_error, "Connection reset") != NULL);
	peers_record_transfer(env.p, 0, 4 * MIB, 1000 * MS, 0); /* self: not a peer, no-op */

	env_free(&env);
	srv_stop(s);
	srv_stop(quiet);
}

static void test_bad_entries(void)
{
	struct srv *s = srv_start("h1");
	char *longpath = malloc(70 * 1024);
	struct env env;
	struct peer_status st;
	size_t h1;

	memset(longpath, 'p', 70 * 1024 - 1);
	longpath[70 * 1024 - 1] = '\0';
	srv_add(s, 1, live_line(1, "games", "good1.db", 1, 1));
	srv_add(s, 2, live_line(2, "nosuchcat", "x.db", 1, 1));
	srv_add(s, 3, live_line(3, "games", "../etc/passwd", 1, 1));
	srv_add(s, 4, xasprintf("{\"seq\":4,\"category\":\"games\",\"path\":\"h.db\",\"size\":1,"
				"\"mtime_ns\":1,\"hash\":\"md5:abc\",\"origin\":\"h1\"}"));
	srv_add(s, 5, live_line(5, "games", "neg.db", -1, 1));
	srv_add(s, 6, xasprintf("{\"seq\":6, this is not json"));
	srv_add(s, 7, live_line(7, "games", "good7.db", 7, 7));
	srv_add(s, 8, xasprintf("{\"seq\":8,\"category\":\"games\",\"path\":\"o.db\",\"size\":1,"
				"\"mtime_ns\":1,\"hash\":\"xxh3-128:%032x\",\"origin\":\"\"}", 8));
	srv_add(s, 9, live_line(9, "games", "huge.db", (long long)1 << 51, 1));
	srv_add(s, 10, xasprintf("{\"seq\":10,\"category\":\"games\",\"path\":\"t.db\",\"size\":1,"
				 "\"mtime_ns\":\"yesterday\",\"hash\":\"xxh3-128:%032x\","
				 "\"origin\":\"h1\"}", 10));
	srv_add(s, 11, del_line(11, "games", "good1.db"));
	srv_add(s, 11, live_line(5, "games", "backwards.db", 1, 1)); /* seq goes back */
	srv_add(s, 12, live_line(12, "games", longpath, 1, 1));
	srv_add(s, 13, live_line(13, "models", "good13.pth", 13, 13));
	srv_add(s, 14, live_line(14, "models", "later.pth", 14, 14)); /* after the header seq */
	srv_set_seq(s, 13);
	free(longpath);

	cap_reset();
	env_init(&env);
	h1 = env_host(&env, "h1", s->port);
	env.cfg.token = NULL;
	env_start(&env, 60000);
	CHECK_EQ_INT(peers_wait_first_pull(env.p, DEADLINE_MS), 0);
	st = status_of(&env, h1);
	CHECK_EQ_INT(st.state, PEER_UP);
	CHECK_EQ_INT(st.errors, 0);
	CHECK_EQ_INT(position(&env, "h1"), 13);
	/* good1 put then deleted, good7, good13; nothing of the bad ones. */
	CHECK_EQ_INT(REC(&env, puts), 3);
	CHECK_EQ_INT(REC(&env, deletes), 1);
	CHECK_EQ_INT(live_files(env.cat, "h1"), 2);
	CHECK(lookup(env.cat, "h1", "games", "good7.db").found);
	CHECK(lookup(env.cat, "h1", "models", "good13.pth").found);
	CHECK(lookup(env.cat, "h1", "games", "good1.db").deleted);
	CHECK(!lookup(env.cat, "h1", "games", "backwards.db").found);
	CHECK(!lookup(env.cat, "h1", "models", "later.pth").found);
	CHECK(
	    cap_has("peer h1: skipping bad manifest entry (seq 2): unknown category 'nosuchcat'"));
	CHECK(cap_has("peer h1: skipping bad manifest entry (seq 3): path"));
	CHECK(cap_has("(seq 4): hash"));
	CHECK(cap_has("(seq 5): size"));
	CHECK(cap_has("(seq ?): not a JSON object"));
	CHECK(cap_has("(seq 8): origin"));
	CHECK(cap_has("(seq 9): size"));
	CHECK(cap_has("(seq 10): mtime_ns"));
	CHECK(cap_has("(seq 5): seq not after 11"));
	CHECK(cap_has("(seq ?): line longer than 64 KiB"));
	CHECK_EQ_INT(cap_count("skipping bad manifest entry"), 10);

	/* The entry beyond the header seq comes with the next pull; bad ones do not return. */
	srv_set_seq(s, 14);
	cap_reset();
	peers_notify(env.p, "h1");
	CHECK(WAIT_FOR(position(&env, "h1") == 14, DEADLINE_MS));
	CHECK_EQ_INT(srv_since(s, 1), 13);
	CHECK(lookup(env.cat, "h1", "models", "later.pth").found);
	CHECK_EQ_INT(cap_count("skipping bad manifest entry"), 0);
	env_free(&env);
	srv_stop(s);
}

static void test_truncated_and_malformed(void)
{
	struct srv *cut = srv_start("h1"), *wrong = srv_start("h2"), *junk = srv_start("h3");
	struct env env;
	struct peer_status st;
	size_t h1, h2, h3;

	cut->no_trailer = true;
	srv_add(cut, 1, live_line(1, "games", "a.db", 1, 1));
	srv_add(cut, 2, live_line(2, "games", "b.db", 2, 2));
	srv_add(cut, 3, live_line(3, "games", "c.db", 3, 3));
	srv_add(cut, 4, xasprintf("{\"seq\":4,\"category\":\"games\",\"pa")); /* cut mid-line */
	srv_set_seq(cut, 5);
	/* h2's address answers with someone else's manifest. */
	wrong->header_override = xasprintf("{\"manifest\":1,\"node\":\"intruder\",\"seq\":3}");
	srv_add(wrong, 1, live_line(1, "games", "x.db", 1, 1));
	srv_set_seq(wrong, 3);
	junk->header_override = xasprintf("<html>hello</html>");
	srv_add(junk, 1, live_line(1, "games", "y.db", 1, 1));

	env_init(&env);
	env.cfg.token = NULL;
	h1 = env_host(&env, "h1", cut->port);
	h2 = env_host(&env, "h2", wrong->port);
	h3 = env_host(&env, "h3", junk->port);
	env_start(&env, 60000);
	CHECK_EQ_INT(peers_wait_first_pull(env.p, DEADLINE_MS), 0);

	/* Cut short: what came is kept, the position is the last entry, and it is an error. */
	st = status_of(&env, h1);
	CHECK_EQ_INT(st.state, PEER_DEGRADED);
	CHECK_EQ_INT(st.errors, 1);
	CHECK(strstr(st.last_error, "cut short after seq 3") != NULL);
	CHECK_EQ_INT(position(&env, "h1"), 3);
	CHECK_EQ_INT(live_files(env.cat, "h1"), 3);
	/* Nothing of a manifest whose header is wrong. */
	st = status_of(&env, h2);
	CHECK_EQ_INT(st.state, PEER_DEGRADED);
	CHECK(strstr(st.last_error, "serves the manifest of 'intruder', not of h2") != NULL);
	CHECK_EQ_INT(position(&env, "h2"), 0);
	CHECK_EQ_INT(live_files(env.cat, "h2"), 0);
	st = status_of(&env, h3);
	CHECK_EQ_INT(st.state, PEER_DEGRADED);
	CHECK(strstr(st.last_error, "does not start with a header") != NULL);
	CHECK_EQ_INT(live_files(env.cat, "h3"), 0);
	CHECK_EQ_INT(REC(&env, puts), 3);

	/* Repaired: resumes after 3 and is up again. */
	pthread_mutex_lock(&cut->lock);
	cut->no_trailer = false;
	free(cut->lines[3]);
	cut->lines[3] = live_line(4, "games", "d.db", 4, 4);
	pthread_mutex_unlock(&cut->lock);
	peers_notify(env.p, "h1");
	CHECK(WAIT_FOR(position(&env, "h1") == 5, DEADLINE_MS));
	CHECK_EQ_INT(srv_since(cut, 1), 3);
	CHECK(WAIT_FOR(status_of(&env, h1).state == PEER_UP, DEADLINE_MS));
	st = status_of(&env, h1);
	CHECK_EQ_INT(st.consecutive_failures, 0);
	CHECK_EQ_INT(st.errors, 1);
	CHECK_EQ_INT(live_files(env.cat, "h1"), 4);
	env_free(&env);
	srv_stop(cut);
	srv_stop(wrong);
	srv_stop(junk);
}

static void test_unreachable(void)
{
	struct srv *s = srv_start("h1");
	struct env env;
	struct peer_status st;
	char want[64];
	size_t h1, h2;
	int port = dead_port(), before;

	strcpy(s->token, "other-token");
	srv_add(s, 1, live_line(1, "games", "a.db", 1, 1));
	srv_set_seq(s, 1);
	env_init(&env);
	h1 = env_host(&env, "h1", s->port);
	h2 = env_host(&env, "h2", port);
	env_start(&env, 60000);

	/* One failure: degraded, with the reason. */
	CHECK_EQ_INT(peers_wait_first_pull(env.p, DEADLINE_MS), 0);
	st = status_of(&env, h1);
	CHECK_EQ_INT(st.state, PEER_DEGRADED);
	CHECK_EQ_INT(st.consecutive_failures, 1);
	snprintf(want, sizeof(want), "HTTP 401 from 127.0.0.1:%d", s->port);
	CHECK_EQ_STR(st.last_error, want);
	st = status_of(&env, h2);
	CHECK_EQ_INT(st.state, PEER_DEGRADED);
	CHECK_EQ_INT(st.last_seen, 0);
	snprintf(want, sizeof(want), "connect to 127.0.0.1:%d: Connection refused", port);
	CHECK_EQ_STR(st.last_error, want);

	/* Two more in a row: down. */
	for (int i = 2; i <= 3; i++) {
		peers_notify(env.p, NULL);
		CHECK(WAIT_FOR(status_of(&env, h1).consecutive_failures == (uint32_t)i &&
				       status_of(&env, h2).consecutive_failures == (uint32_t)i,
			       DEADLINE_MS));
		CHECK_EQ_INT(status_of(&env, h1).state, i < 3 ? PEER_DEGRADED : PEER_DOWN);
		CHECK_EQ_INT(status_of(&env, h2).state, i < 3 ? PEER_DEGRADED : PEER_DOWN);
	}
	CHECK_EQ_INT(status_of(&env, h1).errors, 3);
	CHECK_EQ_INT(live_files(env.cat, "h1"), 0);
	CHECK_EQ_INT(srv_requests(s), 3);

	/* Fixed: the next pull brings it up. */
	pthread_mutex_lock(&s->lock);
	strcpy(s->token, "secret");
	pthread_mutex_unlock(&s->lock);
	peers_notify(env.p, "h1");
	CHECK(WAIT_FOR(status_of(&env, h1).state == PEER_UP, DEADLINE_MS));
	st = status_of(&env, h1);
	CHECK_EQ_INT(st.consecutive_failures, 0);
	CHECK_EQ_INT(st.errors, 3);
	CHECK(st.last_seen > 0);
	CHECK_EQ_INT(position(&env, "h1"), 1);
	env_free(&env);

	/* Backoff: a down host is retried ever more rarely, not every interval. */
	pthread_mutex_lock(&s->lock);
	s->status = 503;
	pthread_mutex_unlock(&s->lock);
	env_init(&env);
	h1 = env_host(&env, "h1", s->port);
	env_start(&env, 50);
	CHECK(WAIT_FOR(status_of(&env, h1).state == PEER_DOWN, DEADLINE_MS));
	before = srv_requests(s);
	usleep(1500 * 1000);
	/* Without backoff ~30 requests; with it (100, 200, 400, 800 ms ...) about 4. */
	CHECK(srv_requests(s) - before <= 6);
	CHECK(strstr(status_of(&env, h1).last_error, "HTTP 503") != NULL);
	env_free(&env);
	srv_stop(s);
}

static void test_reset(void)
{
	struct srv *s = srv_start("h1");
	struct env env;
	size_t h1;

	srv_add(s, 2, live_line(2, "games", "old1.db", 1, 1));
	srv_add(s, 5, live_line(5, "games", "old2.db", 2, 2));
	srv_add(s, 10, live_line(10, "models", "old3.pth", 3, 3));
	srv_set_seq(s, 10);
	env_init(&env);
	env.cfg.token = NULL;
	h1 = env_host(&env, "h1", s->port);
	env_start(&env, 60000);
	CHECK_EQ_INT(peers_wait_first_pull(env.p, DEADLINE_MS), 0);
	CHECK_EQ_INT(position(&env, "h1"), 10);
	CHECK_EQ_INT(live_files(env.cat, "h1"), 3);

	/* h1 got a new catalog: its seq is 2 now. */
	pthread_mutex_lock(&s->lock);
	srv_clear_lines(s);
	pthread_mutex_unlock(&s->lock);
	srv_add(s, 1, live_line(1, "games", "new1.db", 1, 11));
	srv_add(s, 2, live_line(2, "games", "old1.db", 5, 12));
	srv_set_seq(s, 2);
	cap_reset();
	peers_notify(env.p, "h1");
	CHECK(WAIT_FOR(REC(&env, resets) == 1 && position(&env, "h1") == 2, DEADLINE_MS));
	CHECK(WAIT_FOR(status_of(&env, h1).last_seq == 2, DEADLINE_MS));
	CHECK_EQ_INT(srv_since(s, 1), 10);
	CHECK_EQ_INT(srv_since(s, 2), 0);
	CHECK_EQ_INT(live_files(env.cat, "h1"), 2);
	CHECK(!lookup(env.cat, "h1", "games", "old2.db").found);
	CHECK(!lookup(env.cat, "h1", "models", "old3.pth").found);
	CHECK_EQ_INT(lookup(env.cat, "h1", "games", "old1.db").size, 5);
	CHECK(lookup(env.cat, "h1", "games", "new1.db").found);
	CHECK_EQ_INT(status_of(&env, h1).state, PEER_UP);
	CHECK(cap_has("peer h1: manifest seq went back from 10 to 2"));
	env_free(&env);
	srv_stop(s);
}

static void test_stalled_host(void)
{
	struct srv *good = srv_start("good");
	struct env env;
	struct peer_status st;
	size_t hs, hg;
	int port, fd = stalled_listener(&port);
	int64_t t0, waited;

	srv_add(good, 1, live_line(1, "games", "a.db", 1, 1));
	srv_set_seq(good, 1);
	env_init(&env);
	env.cfg.token = NULL;
	hs = env_host(&env, "stall", port); /* pulled first: it comes first in the config */
	hg = env_host(&env, "good", good->port);
	t0 = mono_ns();
	env_start(&env, 60000);

	/* The stalled host costs the low-speed timeout (5 s), no more. */
	CHECK(WAIT_FOR(position(&env, "good") == 1, DEADLINE_MS));
	waited = (mono_ns() - t0) / MS;
	printf("  good host pulled %lld ms after start, behind a stalled one\n", (long long)waited);
	CHECK(waited < 8000);
	CHECK_EQ_INT(peers_wait_first_pull(env.p, DEADLINE_MS), 0);
	st = status_of(&env, hs);
	CHECK_EQ_INT(st.state, PEER_DEGRADED);
	CHECK(strstr(st.last_error, "timed out") != NULL);
	CHECK_EQ_INT(status_of(&env, hg).state, PEER_UP);

	/* Again, with the stalled host being retried while the good one has news. */
	srv_add(good, 2, live_line(2, "games", "b.db", 2, 2));
	srv_set_seq(good, 2);
	t0 = mono_ns();
	peers_notify(env.p, "stall");
	usleep(100 * 1000);
	peers_notify(env.p, "good");
	CHECK(WAIT_FOR(position(&env, "good") == 2, DEADLINE_MS));
	waited = (mono_ns() - t0) / MS;
	CHECK(waited < 8000);
	CHECK(WAIT_FOR(status_of(&env, hs).consecutive_failures == 2, DEADLINE_MS));

	/* Stopping while a pull of the stalled host is in flight does not wait it out. */
	peers_notify(env.p, "stall");
	usleep(300 * 1000);
	t0 = mono_ns();
	peers_stop(env.p);
	env.p = NULL;
	waited = (mono_ns() - t0) / MS;
	printf("  peers_stop during a stalled pull took %lld ms\n", (long long)waited);
	CHECK(waited < 2500);
	env_free(&env);
	close(fd);
	srv_stop(good);
}

/* ---- memory while streaming a big manifest ---- */

#ifdef __SANITIZE_ADDRESS__
size_t __sanitizer_get_current_allocated_bytes(void);

static size_t heap_in_use(void)
{
	return __sanitizer_get_current_allocated_bytes();
}
#else
static size_t heap_in_use(void)
{
	struct mallinfo2 mi = mallinfo2();

	return mi.uordblks + mi.hblkhd;
}
#endif

struct sampler {
	pthread_t thread;
	bool stop;
	size_t peak;
};

static void *sampler_main(void *arg)
{
	struct sampler *sm = arg;

	while (!__atomic_load_n(&sm->stop, __ATOMIC_RELAXED)) {
		size_t now = heap_in_use();

		if (now > sm->peak)
			sm->peak = now;
		usleep(1000);
	}
	return NULL;
}

static void test_big_manifest(void)
{
	const size_t n = 100000;
	struct srv *s = srv_start("h1");
	struct sampler sm = { 0 };
	struct env env;
	size_t base, h1, text_bytes;
	int64_t t0, ms;
	struct gen g = { .n = n };

	/* How big the manifest is, from the generator itself. */
	snprintf(g.node, sizeof(g.node), "h1");
	text_bytes = 0;
	for (size_t i = 0; i <= n + 1; i++) {
		gen_make_line(&g);
		text_bytes += g.len;
	}
	pthread_mutex_lock(&s->lock);
	s->big_n = n;
	pthread_mutex_unlock(&s->lock);
	env_init(&env);
	env.cfg.token = NULL;
	h1 = env_host(&env, "h1", s->port);

	base = heap_in_use();
	sm.peak = base;
	if (pthread_create(&sm.thread, NULL, sampler_main, &sm) != 0)
		abort();
	t0 = mono_ns();
	env_start(&env, 600000);
	/* The position is committed before the batch is reported and the pull recorded. */
	CHECK(WAIT_FOR(position(&env, "h1") == (int64_t)n && REC(&env, puts) == n &&
			       status_of(&env, h1).state == PEER_UP, 240000));
	ms = (mono_ns() - t0) / MS;
	__atomic_store_n(&sm.stop, true, __ATOMIC_RELAXED);
	pthread_join(sm.thread, NULL);

	printf("  %zu entries, %.1f MiB of manifest, pulled in %lld ms; heap peak %.1f MiB above "
	       "the start\n", n, (double)text_bytes / MIB, (long long)ms,
	       (double)(sm.peak - base) / MIB);
	CHECK(text_bytes > 40 * MIB);
	/* Line buffer, one batch, curl and SQLite caches: a few MiB whatever the manifest. */
	CHECK(sm.peak - base < 16 * MIB);
	CHECK_EQ_INT(live_files(env.cat, "h1"), n);
	CHECK_EQ_INT(REC(&env, puts), n);
	CHECK_EQ_INT(status_of(&env, h1).state, PEER_UP);
	CHECK_EQ_INT(status_of(&env, h1).last_seq, n);
	env_free(&env);
	srv_stop(s);
}

/* ---- setup ---- */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

static void test_setup(void)
{
	CHECK(mkdtemp(tmpdir) != NULL);
	log_set_sink(capture_sink, NULL);
}

static void test_cleanup(void)
{
	log_set_sink(NULL, NULL);
	CHECK_EQ_INT(nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS), 0);
}

TEST_MAIN(TEST(test_setup), TEST(test_catalog_apply), TEST(test_base_url),
	  TEST(test_pull_incremental), TEST(test_bad_entries), TEST(test_truncated_and_malformed),
	  TEST(test_unreachable), TEST(test_reset), TEST(test_stalled_host),
	  TEST(test_big_manifest), TEST(test_cleanup))
