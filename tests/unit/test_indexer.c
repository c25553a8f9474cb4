/*
 * test_indexer — the indexer against a real catalog and real directories.
 *
 * Each test builds its own tree under one scratch dir: <t>/root/<category path>/... for the
 * data and <t>/state/catalog.db, and a struct mfs_config by hand (one host, "n1", whose root
 * is <t>/root). The callbacks and the log are recorded so the tests can assert what the owner
 * of the indexer would see. Anything asynchronous is awaited with a deadline, never a bare
 * sleep: a test that waits for publication fails if it does not happen within 10 s.
 */
#include "sync/indexer.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "sync/catalog.h"
#include "sync/config.h"
#include "sync/hash.h"
#include "sync/log.h"
#include "sync/util.h"
#include "tests/unit/testutil.h"

#define DEADLINE_MS 10000
#define MAX_EVENTS 512
#define CAT_GAMES 0
#define CAT_MODELS 1

static char scratch[] = "/tmp/meshfs-test-indexer-XXXXXX";
static int env_counter;

/* --- log capture -------------------------------------------------------------------------- */

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static char *log_lines[4096];
static int log_levels[4096];
static size_t n_log_lines;

static void capture_log(int level, const char *line, void *arg)
{
	pthread_mutex_lock(&log_lock);
	if (n_log_lines < sizeof(log_lines) / sizeof(log_lines[0])) {
		log_levels[n_log_lines] = level;
		log_lines[n_log_lines++] = strdup(line);
	}
	pthread_mutex_unlock(&log_lock);
	if (getenv("MESHFS_TEST_VERBOSE"))
		fprintf(stderr, "log[%d]: %s\n", level, line);
}

static void log_reset(void)
{
	pthread_mutex_lock(&log_lock);
	for (size_t i = 0; i < n_log_lines; i++)
		free(log_lines[i]);
	n_log_lines = 0;
	pthread_mutex_unlock(&log_lock);
}

/* Lines at @level (or any level when -1) that contain every one of @a and @b (b may be NULL). */
static int log_count(int level, const char *a, const char *b)
{
	int n = 0;

	pthread_mutex_lock(&log_lock);
	for (size_t i = 0; i < n_log_lines; i++)
		if ((level < 0 || log_levels[i] == level) && strstr(log_lines[i], a) &&
		    (!b || strstr(log_lines[i], b)))
			n++;
	pthread_mutex_unlock(&log_lock);
	return n;
}

/* --- callback recorder -------------------------------------------------------------------- */

struct event {
	size_t cat;
	char *path;
	struct hash128 hash;
	int64_t seq;
	uint64_t size;
};

struct recorder {
	pthread_mutex_t lock;
	struct event published[MAX_EVENTS];
	size_t n_published;
	struct event deleted[MAX_EVENTS];
	size_t n_deleted;
	struct event seen[MAX_EVENTS];
	size_t n_seen;
	struct event gone[MAX_EVENTS];
	size_t n_gone;
};

static void rec_add(struct recorder *r, struct event *arr, size_t *n, size_t cat,
		    const char *path, const struct cat_entry *e)
{
	pthread_mutex_lock(&r->lock);
	if (*n < MAX_EVENTS) {
		arr[*n].cat = cat;
		arr[*n].path = strdup(path);
		if (e) {
			arr[*n].hash = e->hash;
			arr[*n].seq = e->seq;
			arr[*n].size = e->size;
		}
		(*n)++;
	}
	pthread_mutex_unlock(&r->lock);
}

static void on_published(void *arg, size_t cat, const struct cat_entry *e)
{
	struct recorder *r = arg;

	rec_add(r, r->published, &r->n_published, cat, e->path, e);
}

static void on_deleted(void *arg, size_t cat, const char *path)
{
	struct recorder *r = arg;

	rec_add(r, r->deleted, &r->n_deleted, cat, path, NULL);
}

static void on_dir_seen(void *arg, size_t cat, const char *path)
{
	struct recorder *r = arg;

	rec_add(r, r->seen, &r->n_seen, cat, path, NULL);
}

static void on_dir_gone(void *arg, size_t cat, const char *path)
{
	struct recorder *r = arg;

	rec_add(r, r->gone, &r->n_gone, cat, path, NULL);
}

static const struct indexer_ops rec_ops = {
	.published = on_published,
	.deleted = on_deleted,
	.dir_seen = on_dir_seen,
	.dir_gone = on_dir_gone,
};

static void rec_clear(struct recorder *r)
{
	pthread_mutex_lock(&r->lock);
	for (size_t i = 0; i < r->n_published; i++)
		free(r->published[i].path);
	for (size_t i = 0; i < r->n_deleted; i++)
		free(r->deleted[i].path);
	for (size_t i = 0; i < r->n_seen; i++)
		free(r->seen[i].path);
	for (size_t i = 0; i < r->n_gone; i++)
		free(r->gone[i].path);
	r->n_published = r->n_deleted = r->n_seen = r->n_gone = 0;
	pthread_mutex_unlock(&r->lock);
}

/* How many recorded events of one kind name (@cat, @path). */
static int rec_count(struct recorder *r, const struct event *arr, const size_t *n, size_t cat,
		     const char *path)
{
	int count = 0;

	pthread_mutex_lock(&r->lock);
	for (size_t i = 0; i < *n; i++)
		if (arr[i].cat == cat && strcmp(arr[i].path, path) == 0)
			count++;
	pthread_mutex_unlock(&r->lock);
	return count;
}

static size_t rec_total(struct recorder *r, const size_t *n)
{
	size_t v;

	pthread_mutex_lock(&r->lock);
	v = *n;
	pthread_mutex_unlock(&r->lock);
	return v;
}

#define N_PUBLISHED(env) rec_total(&(env)->rec, &(env)->rec.n_published)
#define N_DELETED(env) rec_total(&(env)->rec, &(env)->rec.n_deleted)
#define PUBLISHED(env, path) \
	rec_count(&(env)->rec, (env)->rec.published, &(env)->rec.n_published, CAT_GAMES, path)
#define DELETED(env, path) \
	rec_count(&(env)->rec, (env)->rec.deleted, &(env)->rec.n_deleted, CAT_GAMES, path)
#define SEEN(env, path) rec_count(&(env)->rec, (env)->rec.seen, &(env)->rec.n_seen, CAT_GAMES, path)
#define GONE(env, path) rec_count(&(env)->rec, (env)->rec.gone, &(env)->rec.n_gone, CAT_GAMES, path)

/* --- environment -------------------------------------------------------------------------- */

struct env {
	char dir[128];		/* <scratch>/<n> */
	char root[160];		/* the host's root */
	char games[200];	/* root/data/games */
	char models[200];	/* root/models (not created) */
	char db[200];
	struct cfg_host host;
	struct mfs_config cfg;
	struct catalog *cat;
	struct indexer *ix;
	struct recorder rec;
};

static void must(int ok, const char *what)
{
	if (!ok) {
		perror(what);
		abort();
	}
}

static void env_init(struct env *env, double quiet)
{
	char state[160];

	memset(env, 0, sizeof(*env));
	pthread_mutex_init(&env->rec.lock, NULL);
	snprintf(env->dir, sizeof(env->dir), "%s/%d", scratch, ++env_counter);
	snprintf(env->root, sizeof(env->root), "%s/root", env->dir);
	snprintf(env->games, sizeof(env->games), "%s/data/games", env->root);
	snprintf(env->models, sizeof(env->models), "%s/models", env->root);
	snprintf(state, sizeof(state), "%s/state", env->dir);
	snprintf(env->db, sizeof(env->db), "%s/catalog.db", state);
	must(mkdir_p(env->games, 0755) == 0, env->games);
	must(mkdir_p(state, 0755) == 0, state);

	env->host.name = (char *)"n1";
	env->host.root = env->root;
	env->host.status = (char *)"ready";
	env->host.active = true;
	env->cfg.node = (char *)"n1";
	env->cfg.self = &env->host;
	env->cfg.hosts = &env->host;
	env->cfg.n_hosts = 1;
	env->cfg.categories[0].name = (char *)"games";
	env->cfg.categories[0].path = (char *)"data/games";
	env->cfg.categories[1].name = (char *)"models";
	env->cfg.categories[1].path = (char *)"models";
	env->cfg.n_categories = 2;
	env->cfg.publish_quiet_seconds = quiet;
	must(catalog_open(env->db, &env->cat) == 0, "catalog_open");
}

static int env_start(struct env *env, int rescan_seconds)
{
	int ret = indexer_start(&env->cfg, env->cat, &rec_ops, &env->rec, rescan_seconds,
				&env->ix);

	CHECK_EQ_INT(ret, 0);
	if (ret == 0)
		CHECK_EQ_INT(indexer_wait_scan(env->ix, DEADLINE_MS), 0);
	return ret;
}

static void env_stop(struct env *env)
{
	indexer_stop(env->ix);
	env->ix = NULL;
}

static void env_free(struct env *env)
{
	env_stop(env);
	catalog_close(env->cat);
	rec_clear(&env->rec);
	pthread_mutex_destroy(&env->rec.lock);
}

static void games_path(const struct env *env, const char *rel, char *out, size_t len)
{
	snprintf(out, len, "%s/%s", env->games, rel);
}

static void write_data(const struct env *env, const char *rel, const char *data, size_t len,
		       int flags)
{
	char path[512];
	int fd;

	games_path(env, rel, path, sizeof(path));
	fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | flags, 0644);
	must(fd >= 0, path);
	must(write_all(fd, data, len) == 0, path);
	close(fd);
}

/* Writes @text to an absolute path (outside the data dirs). */
static void write_abs(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

	must(fd >= 0, path);
	must(write_all(fd, text, strlen(text)) == 0, path);
	close(fd);
}

static void put_file(const struct env *env, const char *rel, const char *text)
{
	write_data(env, rel, text, strlen(text), O_TRUNC);
}

static void make_dir(const struct env *env, const char *rel)
{
	char path[512];

	games_path(env, rel, path, sizeof(path));
	must(mkdir_p(path, 0755) == 0, path);
}

static void remove_file(const struct env *env, const char *rel)
{
	char path[512];

	games_path(env, rel, path, sizeof(path));
	must(unlink(path) == 0, path);
}

/* The hash a reader of the file would compute now. */
static struct hash128 hash_of(const struct env *env, const char *rel)
{
	struct hash128 h = { 0, 0 };
	char path[512];
	uint64_t size;
	int fd;

	games_path(env, rel, path, sizeof(path));
	fd = open(path, O_RDONLY | O_CLOEXEC);
	must(fd >= 0, path);
	must(hash_fd(fd, &h, &size, NULL, NULL) == 0, "hash_fd");
	close(fd);
	return h;
}

struct got {
	bool found;
	bool deleted;
	uint64_t size;
	int64_t mtime_ns;
	struct hash128 hash;
	int64_t seq;
	uint64_t dev, ino;
	int64_t ctime_ns;
	char origin[32];
};

static void got_cb(void *arg, const struct cat_entry *e)
{
	struct got *g = arg;

	g->found = true;
	g->deleted = e->deleted;
	g->size = e->size;
	g->mtime_ns = e->mtime_ns;
	g->hash = e->hash;
	g->seq = e->seq;
	g->dev = e->dev;
	g->ino = e->ino;
	g->ctime_ns = e->ctime_ns;
	snprintf(g->origin, sizeof(g->origin), "%s", e->origin);
}

static struct got lookup(const struct env *env, const char *rel)
{
	struct got g;

	memset(&g, 0, sizeof(g));
	catalog_get(env->cat, "n1", "games", rel, got_cb, &g);
	return g;
}

static bool is_live(const struct env *env, const char *rel)
{
	struct got g = lookup(env, rel);

	return g.found && !g.deleted;
}

/* Live, and with the hash the file has right now. */
static bool is_current(const struct env *env, const char *rel)
{
	struct got g = lookup(env, rel);
	struct hash128 h;

	if (!g.found || g.deleted)
		return false;
	h = hash_of(env, rel);
	return hash_equal(&g.hash, &h);
}

static bool has_hash(const struct env *env, const char *rel, const struct hash128 *h)
{
	struct got g = lookup(env, rel);

	return g.found && !g.deleted && hash_equal(&g.hash, h);
}

static int64_t ns_of(const struct timespec *ts)
{
	return (int64_t)ts->tv_sec * 1000000000 + ts->tv_nsec;
}

static void sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000 };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* Polls @cond every 20 ms until it holds or @ms pass; returns whether it held. */
#define WAIT_FOR(cond, ms)                                                                  \
	({                                                                                  \
		int64_t wf_end = mono_ns() + (int64_t)(ms) * 1000000;                       \
		bool wf_ok;                                                                 \
		while (!(wf_ok = (cond)) && mono_ns() < wf_end)                             \
			sleep_ms(20);                                                       \
		wf_ok;                                                                      \
	})

static struct indexer_stats stats_of(const struct env *env)
{
	struct indexer_stats st;

	indexer_get_stats(env->ix, &st);
	return st;
}

/* --- tests -------------------------------------------------------------------------------- */

static const char *const initial_files[] = { "a.bin", "sub/b.txt", "sub/deeper/c.txt",
					     "empty" };

static void make_initial_tree(struct env *env)
{
	char path[512], *big;
	size_t big_len = 9 * 1024 * 1024 + 123; /* three chunks */

	big = malloc(big_len);
	must(big != NULL, "malloc");
	for (size_t i = 0; i < big_len; i++)
		big[i] = (char)(i * 31 + (i >> 12));
	write_data(env, "a.bin", big, big_len, O_TRUNC);
	free(big);
	make_dir(env, "sub/deeper");
	make_dir(env, "emptydir");
	put_file(env, "sub/b.txt", "bee\n");
	put_file(env, "sub/deeper/c.txt", "sea\n");
	put_file(env, "empty", "");
	/* Never published: a symlink, a FIFO, a sidecar, a file held by its sidecar. */
	games_path(env, "link", path, sizeof(path));
	must(symlink("a.bin", path) == 0, path);
	games_path(env, "dirlink", path, sizeof(path));
	must(symlink("sub", path) == 0, path);
	games_path(env, "fifo", path, sizeof(path));
	must(mkfifo(path, 0644) == 0, path);
	put_file(env, "foo.writing", "partial");
	put_file(env, "held", "not yet");
	put_file(env, "held.writing", "");
}

static void test_initial_scan_publishes(void)
{
	struct env env;
	struct indexer_stats st;
	uint64_t bytes = 0;
	struct stat sb;
	char path[512];

	env_init(&env, 0.3);
	make_initial_tree(&env);
	log_reset();
	if (env_start(&env, 3600) != 0)
		goto out;
	CHECK(WAIT_FOR(N_PUBLISHED(&env) >= 4 && stats_of(&env).files == 4, DEADLINE_MS));

	for (size_t i = 0; i < sizeof(initial_files) / sizeof(initial_files[0]); i++) {
		const char *rel = initial_files[i];
		struct got g = lookup(&env, rel);
		struct hash128 h = hash_of(&env, rel), *chunks = NULL;
		size_t n_chunks = 0;

		games_path(&env, rel, path, sizeof(path));
		must(lstat(path, &sb) == 0, path);
		CHECK(g.found && !g.deleted);
		CHECK(hash_equal(&g.hash, &h));
		CHECK_EQ_INT(g.size, sb.st_size);
		CHECK_EQ_INT(g.ino, sb.st_ino);
		CHECK_EQ_INT(g.ctime_ns, ns_of(&sb.st_ctim));
		CHECK_EQ_STR(g.origin, "n1");
		CHECK_EQ_INT(PUBLISHED(&env, rel), 1);
		CHECK_EQ_INT(catalog_get_chunks(env.cat, "n1", "games", rel, &chunks, &n_chunks),
			     0);
		CHECK_EQ_INT(n_chunks, (sb.st_size + HASH_CHUNK_SIZE - 1) / HASH_CHUNK_SIZE);
		free(chunks);
		bytes += sb.st_size;
	}
	/* The callback carries the published entry. */
	pthread_mutex_lock(&env.rec.lock);
	for (size_t i = 0; i < env.rec.n_published; i++) {
		struct hash128 h = hash_of(&env, env.rec.published[i].path);

		CHECK(hash_equal(&env.rec.published[i].hash, &h));
		CHECK(env.rec.published[i].seq > 0);
	}
	pthread_mutex_unlock(&env.rec.lock);

	CHECK(!lookup(&env, "link").found);
	CHECK(!lookup(&env, "dirlink").found);
	CHECK(!lookup(&env, "fifo").found);
	CHECK(!lookup(&env, "foo.writing").found);
	CHECK(!lookup(&env, "held").found);
	CHECK(!lookup(&env, "held.writing").found);
	CHECK(!lookup(&env, "dirlink/b.txt").found);
	CHECK_EQ_INT(N_PUBLISHED(&env), 4);

	CHECK_EQ_INT(SEEN(&env, ""), 1);
	CHECK_EQ_INT(SEEN(&env, "sub"), 1);
	CHECK_EQ_INT(SEEN(&env, "sub/deeper"), 1);
	CHECK_EQ_INT(SEEN(&env, "emptydir"), 1);
	CHECK_EQ_INT(SEEN(&env, "dirlink"), 0);

	st = stats_of(&env);
	CHECK_EQ_INT(st.files, 4);
	CHECK_EQ_INT(st.bytes, bytes);
	CHECK_EQ_INT(st.hashed_files, 4);
	CHECK_EQ_INT(st.hashed_bytes, bytes);
	CHECK_EQ_INT(st.unreadable, 0);
	CHECK_EQ_STR(st.last_unreadable, "");
	CHECK(st.last_scan_done > 0);

	/* The missing models dir is reported, not created. */
	CHECK(access(env.models, F_OK) != 0);
	CHECK(log_count(LOG_INFO, env.models, "treating it as empty") == 1);
	CHECK_EQ_INT(log_count(LOG_WARNING, "", NULL), 0);

	/* A restart on the same catalog re-reads nothing. */
	env_stop(&env);
	rec_clear(&env.rec);
	if (env_start(&env, 3600) != 0)
		goto out;
	sleep_ms(600);	/* past the quiet period, should anything have been pending */
	st = stats_of(&env);
	CHECK_EQ_INT(st.hashed_files, 0);
	CHECK_EQ_INT(st.hashed_bytes, 0);
	CHECK_EQ_INT(st.files, 4);
	CHECK_EQ_INT(st.bytes, bytes);
	CHECK_EQ_INT(N_PUBLISHED(&env), 0);
	CHECK_EQ_INT(N_DELETED(&env), 0);
	CHECK_EQ_INT(SEEN(&env, "sub/deeper"), 1);
out:
	env_free(&env);
}

static void test_changed_file_rehashed(void)
{
	struct env env;
	struct got before, after;
	struct hash128 h;

	env_init(&env, 0.3);
	put_file(&env, "x.txt", "version one\n");
	put_file(&env, "y.txt", "unchanged\n");
	if (env_start(&env, 3600) != 0)
		goto out;
	CHECK(WAIT_FOR(is_live(&env, "x.txt") && is_live(&env, "y.txt"), DEADLINE_MS));
	before = lookup(&env, "x.txt");

	write_data(&env, "x.txt", "and two\n", 8, O_APPEND);
	h = hash_of(&env, "x.txt");
	/* The callback comes last (after the catalog and the counters): wait for it. */
	CHECK(WAIT_FOR(has_hash(&env, "x.txt", &h) && PUBLISHED(&env, "x.txt") == 2, DEADLINE_MS));
	after = lookup(&env, "x.txt");
	CHECK(after.seq > before.seq);
	CHECK(!after.deleted);
	CHECK_EQ_INT(after.size, strlen("version one\nand two\n"));
	CHECK_EQ_INT(PUBLISHED(&env, "x.txt"), 2);
	CHECK_EQ_INT(PUBLISHED(&env, "y.txt"), 1);
	CHECK_EQ_INT(stats_of(&env).hashed_files, 3);

	/* Same bytes, new ctime (chmod): recorded without a new hash being different, and
	 * not hashed again by the next rescan. */
	{
		char path[512];
		struct indexer_stats st;

		games_path(&env, "y.txt", path, sizeof(path));
		CHECK_EQ_INT(chmod(path, 0600), 0);
		CHECK(WAIT_FOR(stats_of(&env).hashed_files == 4, DEADLINE_MS));
		indexer_rescan(env.ix);
		sleep_ms(800);
		st = stats_of(&env);
		CHECK_EQ_INT(st.hashed_files, 4);
		CHECK_EQ_INT(st.files, 2);
	}
out:
	env_free(&env);
}

static void test_inotify_new_and_deleted(void)
{
	struct env env;
	int64_t t0;

	env_init(&env, 0.2);
	make_dir(&env, "old");
	put_file(&env, "old/gone.txt", "bye\n");
	put_file(&env, "keep.txt", "stay\n");
	/* No periodic rescan inside the test: only inotify can find these. */
	if (env_start(&env, 3600) != 0)
		goto out;
	CHECK(WAIT_FOR(is_live(&env, "old/gone.txt") && is_live(&env, "keep.txt"), DEADLINE_MS));

	t0 = mono_ns();
	put_file(&env, "new.txt", "hello\n");
	make_dir(&env, "fresh/deep");
	put_file(&env, "fresh/deep/n.txt", "nested\n");
	CHECK(WAIT_FOR(is_current(&env, "new.txt") && is_current(&env, "fresh/deep/n.txt"),
		       DEADLINE_MS));
	CHECK(mono_ns() - t0 < 5LL * 1000000000);
	CHECK_EQ_INT(SEEN(&env, "fresh"), 1);
	CHECK(SEEN(&env, "fresh/deep") >= 1);

	/* A file created in a directory made after the scan is watched too. */
	put_file(&env, "fresh/later.txt", "later\n");
	CHECK(WAIT_FOR(is_current(&env, "fresh/later.txt"), DEADLINE_MS));

	remove_file(&env, "keep.txt");
	CHECK(WAIT_FOR(DELETED(&env, "keep.txt") == 1, DEADLINE_MS));
	CHECK(lookup(&env, "keep.txt").found);
	CHECK(lookup(&env, "keep.txt").deleted);

	/* A whole directory removed: its files deleted, the directory reported gone. */
	remove_file(&env, "old/gone.txt");
	{
		char path[512];

		games_path(&env, "old", path, sizeof(path));
		CHECK_EQ_INT(rmdir(path), 0);
	}
	CHECK(WAIT_FOR(DELETED(&env, "old/gone.txt") == 1 && GONE(&env, "old") == 1,
		       DEADLINE_MS));
	CHECK(lookup(&env, "old/gone.txt").deleted);
	CHECK(WAIT_FOR(stats_of(&env).files == 3, DEADLINE_MS));
	CHECK_EQ_INT(GONE(&env, "fresh"), 0);

	/* Trees moved in from outside and out of the data dir, not through the mount. */
	{
		char outside[300], inside[512];

		snprintf(outside, sizeof(outside), "%s/outside/sub", env.dir);
		must(mkdir_p(outside, 0755) == 0, outside);
		snprintf(outside, sizeof(outside), "%s/outside/sub/in.txt", env.dir);
		write_abs(outside, "in\n");
		snprintf(outside, sizeof(outside), "%s/outside", env.dir);
		games_path(&env, "arrived", inside, sizeof(inside));
		CHECK_EQ_INT(rename(outside, inside), 0);
		CHECK(WAIT_FOR(is_current(&env, "arrived/sub/in.txt"), DEADLINE_MS));
		CHECK(SEEN(&env, "arrived/sub") >= 1);

		games_path(&env, "fresh", inside, sizeof(inside));
		snprintf(outside, sizeof(outside), "%s/left", env.dir);
		CHECK_EQ_INT(rename(inside, outside), 0);
		CHECK(WAIT_FOR(DELETED(&env, "fresh/deep/n.txt") == 1 &&
				       DELETED(&env, "fresh/later.txt") == 1 &&
				       GONE(&env, "fresh/deep") == 1 && GONE(&env, "fresh") == 1,
			       DEADLINE_MS));
		/* Its watches went with it: changes out there are not ours. */
		snprintf(outside, sizeof(outside), "%s/left/after.txt", env.dir);
		write_abs(outside, "x");
		sleep_ms(600);
		CHECK(!lookup(&env, "fresh/after.txt").found);
		CHECK(WAIT_FOR(stats_of(&env).files == 2, DEADLINE_MS));
	}
out:
	env_free(&env);
}

static void test_deleted_found_by_rescan(void)
{
	struct env env;

	env_init(&env, 0.2);
	put_file(&env, "a.txt", "a\n");
	put_file(&env, "b.txt", "b\n");
	if (env_start(&env, 3600) != 0)
		goto out;
	CHECK(WAIT_FOR(is_live(&env, "a.txt") && is_live(&env, "b.txt"), DEADLINE_MS));
	env_stop(&env);

	/* Gone while nobody watched: the first scan of the next start must notice. */
	remove_file(&env, "a.txt");
	rec_clear(&env.rec);
	if (env_start(&env, 3600) != 0)
		goto out;
	CHECK_EQ_INT(DELETED(&env, "a.txt"), 1);
	CHECK(lookup(&env, "a.txt").deleted);
	CHECK(is_live(&env, "b.txt"));
	CHECK_EQ_INT(stats_of(&env).files, 1);
out:
	env_free(&env);
}

static void test_writing_sidecar(void)
{
	struct env env;

	env_init(&env, 0.2);
	if (env_start(&env, 3600) != 0)
		goto out;
	put_file(&env, "big.dat.writing", "");
	put_file(&env, "big.dat", "first half");
	write_data(&env, "big.dat", ", second half", 13, O_APPEND);
	indexer_publish_now(env.ix, CAT_GAMES, "big.dat");
	sleep_ms(1200);	/* six quiet periods */
	CHECK(!lookup(&env, "big.dat").found);
	CHECK(!lookup(&env, "big.dat.writing").found);
	CHECK_EQ_INT(N_PUBLISHED(&env), 0);

	remove_file(&env, "big.dat.writing");
	CHECK(WAIT_FOR(is_current(&env, "big.dat") && PUBLISHED(&env, "big.dat") == 1,
		       DEADLINE_MS));
	CHECK_EQ_INT(lookup(&env, "big.dat").size, strlen("first half, second half"));
	CHECK_EQ_INT(PUBLISHED(&env, "big.dat"), 1);
	CHECK(!lookup(&env, "big.dat.writing").found);
out:
	env_free(&env);
}

static void test_quiet_period(void)
{
	struct env env;
	int64_t last_write = 0, end, published_at;
	struct timespec times[2];
	char path[512];
	bool early = false;

	env_init(&env, 1.0);
	/* Found by the scan (no event) while still fresh: waits out the quiet period too. */
	put_file(&env, "fresh.bin", "just written\n");
	last_write = mono_ns();
	if (env_start(&env, 3600) != 0)
		goto out;
	CHECK(!lookup(&env, "fresh.bin").found);
	CHECK(WAIT_FOR(is_current(&env, "fresh.bin"), DEADLINE_MS));
	CHECK(mono_ns() - last_write >= 900LL * 1000000);

	/* Stamped an hour ahead (clock skew, an unpacked archive): published once it has been
	 * seen unchanged for the quiet period, not an hour later. */
	put_file(&env, "future.bin", "from the future\n");
	games_path(&env, "future.bin", path, sizeof(path));
	clock_gettime(CLOCK_REALTIME, &times[0]);
	times[0].tv_sec += 3600;
	times[1] = times[0];
	CHECK_EQ_INT(utimensat(AT_FDCWD, path, times, 0), 0);
	CHECK(WAIT_FOR(is_current(&env, "future.bin"), DEADLINE_MS));

	/* Touched every 100 ms for 2.5 s: never quiet for a whole second. */
	end = mono_ns() + 2500LL * 1000000;
	while (mono_ns() < end) {
		write_data(&env, "busy.log", "x", 1, O_APPEND);
		last_write = mono_ns();
		sleep_ms(100);
		if (lookup(&env, "busy.log").found)
			early = true;
	}
	CHECK(!early);
	CHECK(WAIT_FOR(is_current(&env, "busy.log") && PUBLISHED(&env, "busy.log") == 1,
		       DEADLINE_MS));
	published_at = mono_ns();
	/* Not before it had been left alone for (about) the quiet period. */
	CHECK(published_at - last_write >= 900LL * 1000000);
	CHECK_EQ_INT(PUBLISHED(&env, "busy.log"), 1);
	CHECK_EQ_INT(stats_of(&env).hashed_files, 3);
out:
	env_free(&env);
}

static void test_publish_now(void)
{
	struct env env;
	char from[512], to[512];
	uint64_t hashed;

	/* A quiet period no test waits out: only publish-now can publish within it. */
	env_init(&env, 30);
	if (env_start(&env, 3600) != 0)
		goto out;
	put_file(&env, "closed.txt", "written through the mount\n");
	sleep_ms(300);
	CHECK(!lookup(&env, "closed.txt").found);
	indexer_publish_now(env.ix, CAT_GAMES, "closed.txt");
	CHECK(WAIT_FOR(is_current(&env, "closed.txt") && PUBLISHED(&env, "closed.txt") == 1, 5000));

	/* Unchanged: asked again, nothing is hashed or published. */
	hashed = stats_of(&env).hashed_files;
	indexer_publish_now(env.ix, CAT_GAMES, "closed.txt");
	indexer_publish_now(env.ix, CAT_GAMES, "no-such-file");
	indexer_publish_now(env.ix, CAT_GAMES, "../escape");
	indexer_publish_now(env.ix, 99, "closed.txt");
	sleep_ms(300);
	CHECK_EQ_INT(stats_of(&env).hashed_files, hashed);
	CHECK_EQ_INT(PUBLISHED(&env, "closed.txt"), 1);
	CHECK(!lookup(&env, "no-such-file").found);

	/* Written under a temporary name and renamed before it was ever published. */
	put_file(&env, "t.tmp", "temp then rename\n");
	games_path(&env, "t.tmp", from, sizeof(from));
	games_path(&env, "t.final", to, sizeof(to));
	CHECK_EQ_INT(rename(from, to), 0);
	CHECK_EQ_INT(indexer_renamed(env.ix, CAT_GAMES, "t.tmp", "t.final", false), 0);
	CHECK(WAIT_FOR(is_current(&env, "t.final"), 5000));
	CHECK(!lookup(&env, "t.tmp").found);
out:
	env_free(&env);
}

static void test_renamed_and_removed(void)
{
	struct env env;
	struct got before, after, one_before, one_after;
	struct indexer_stats st;
	uint64_t hashed;
	size_t pub, del;
	char from[512], to[512];
	struct stat sb;

	env_init(&env, 0.3);
	make_dir(&env, "r/inner");
	put_file(&env, "r/one.txt", "one\n");
	put_file(&env, "r/inner/two.txt", "two\n");
	put_file(&env, "solo.txt", "solo\n");
	put_file(&env, "target.txt", "will be overwritten\n");
	if (env_start(&env, 3600) != 0)
		goto out;
	CHECK(WAIT_FOR(stats_of(&env).files == 4 && N_PUBLISHED(&env) == 4, DEADLINE_MS));
	hashed = stats_of(&env).hashed_files;
	CHECK_EQ_INT(hashed, 4);
	pub = N_PUBLISHED(&env);
	del = N_DELETED(&env);

	/* A file, onto a name that already had a published file. */
	before = lookup(&env, "solo.txt");
	games_path(&env, "solo.txt", from, sizeof(from));
	games_path(&env, "target.txt", to, sizeof(to));
	CHECK_EQ_INT(rename(from, to), 0);
	CHECK_EQ_INT(indexer_renamed(env.ix, CAT_GAMES, "solo.txt", "target.txt", false), 0);
	after = lookup(&env, "target.txt");
	must(lstat(to, &sb) == 0, to);
	CHECK(lookup(&env, "solo.txt").deleted);
	CHECK(after.found && !after.deleted);
	CHECK(hash_equal(&after.hash, &before.hash));
	CHECK_EQ_INT(after.size, before.size);
	CHECK(after.seq > before.seq);
	CHECK_EQ_INT(after.ino, sb.st_ino);
	CHECK_EQ_INT(after.ctime_ns, ns_of(&sb.st_ctim));
	CHECK_EQ_INT(stats_of(&env).files, 3);

	/* A directory tree. */
	one_before = lookup(&env, "r/one.txt");
	games_path(&env, "r", from, sizeof(from));
	games_path(&env, "moved", to, sizeof(to));
	CHECK_EQ_INT(rename(from, to), 0);
	CHECK_EQ_INT(indexer_renamed(env.ix, CAT_GAMES, "r", "moved", true), 0);
	one_after = lookup(&env, "moved/one.txt");
	CHECK(one_after.found && !one_after.deleted);
	CHECK(hash_equal(&one_after.hash, &one_before.hash));
	CHECK(one_after.seq > one_before.seq);
	CHECK(is_current(&env, "moved/inner/two.txt"));
	CHECK(lookup(&env, "r/one.txt").deleted);
	CHECK(lookup(&env, "r/inner/two.txt").deleted);

	/* Synchronous calls make no callbacks. */
	CHECK_EQ_INT(N_PUBLISHED(&env), pub);
	CHECK_EQ_INT(N_DELETED(&env), del);

	/* Unlink. */
	remove_file(&env, "target.txt");
	CHECK_EQ_INT(indexer_removed(env.ix, CAT_GAMES, "target.txt"), 0);
	CHECK(lookup(&env, "target.txt").deleted);
	CHECK_EQ_INT(indexer_removed(env.ix, CAT_GAMES, "never-was.txt"), 0);
	CHECK_EQ_INT(indexer_removed(env.ix, CAT_GAMES, "../x"), -EINVAL);
	CHECK_EQ_INT(indexer_renamed(env.ix, CAT_GAMES, "/abs", "x", false), -EINVAL);
	CHECK_EQ_INT(indexer_renamed(env.ix, CAT_GAMES, "moved/one.txt", "moved/one.txt", false),
		     0);
	CHECK(is_live(&env, "moved/one.txt"));
	CHECK_EQ_INT(N_DELETED(&env), del);

	/* The inotify events for all of that, once quiet, find nothing to hash again. */
	sleep_ms(1500);
	indexer_rescan(env.ix);
	sleep_ms(500);
	st = stats_of(&env);
	CHECK_EQ_INT(st.hashed_files, hashed);
	CHECK_EQ_INT(st.files, 2);
	CHECK(is_live(&env, "moved/one.txt"));
	CHECK(is_live(&env, "moved/inner/two.txt"));
	CHECK(!is_live(&env, "target.txt"));
	CHECK(GONE(&env, "r") >= 1);
	CHECK(SEEN(&env, "moved/inner") >= 1);
out:
	env_free(&env);
}

static void test_missing_category_keeps_entries(void)
{
	struct env env;
	char away[512];

	env_init(&env, 0.2);
	put_file(&env, "keep.bin", "precious\n");
	if (env_start(&env, 3600) != 0)
		goto out;
	CHECK(WAIT_FOR(is_live(&env, "keep.bin"), DEADLINE_MS));
	env_stop(&env);

	/* As if the storage behind it were unmounted. */
	snprintf(away, sizeof(away), "%s.away", env.games);
	must(rename(env.games, away) == 0, away);
	log_reset();
	rec_clear(&env.rec);
	if (env_start(&env, 3600) != 0)
		goto out;
	CHECK(is_live(&env, "keep.bin"));
	CHECK_EQ_INT(N_DELETED(&env), 0);
	CHECK_EQ_INT(log_count(LOG_WARNING, env.games, "keeping its 1 catalog entries"), 1);
	CHECK(access(env.games, F_OK) != 0);

	/* Back again: nothing rehashed, nothing deleted. */
	must(rename(away, env.games) == 0, env.games);
	indexer_rescan(env.ix);
	CHECK(WAIT_FOR(log_count(LOG_INFO, env.games, "is back") == 1, DEADLINE_MS));
	sleep_ms(300);
	CHECK(is_live(&env, "keep.bin"));
	CHECK_EQ_INT(N_DELETED(&env), 0);
	CHECK_EQ_INT(stats_of(&env).hashed_files, 0);
out:
	env_free(&env);
}

/*
 * The body of the unreadable test, run by a user that permissions apply to: secret.bin
 * (mode 0) and the dir locked/ (mode 0) were published before they were locked. Returns the
 * number of failed checks.
 */
static int unreadable_body(struct env *env, int64_t secret_seq)
{
	int failed = tu_failed_checks;
	struct indexer_stats st;

	if (env_start(env, 3600) != 0)
		goto out;
	CHECK(WAIT_FOR(stats_of(env).unreadable == 2, DEADLINE_MS));
	st = stats_of(env);
	CHECK_EQ_INT(st.unreadable, 2);
	CHECK(strstr(st.last_unreadable, "games/") == st.last_unreadable);
	CHECK(strstr(st.last_unreadable, "Permission denied") != NULL);
	CHECK_EQ_INT(log_count(LOG_WARNING, "games/secret.bin: Permission denied", NULL), 1);
	CHECK_EQ_INT(log_count(LOG_WARNING, "games/locked/: Permission denied", NULL), 1);
	/* Skipped, not deleted, not republished; the locked dir exists: seen, not gone. */
	CHECK(is_live(env, "ok.txt"));
	CHECK(is_live(env, "secret.bin"));
	CHECK_EQ_INT(lookup(env, "secret.bin").seq, secret_seq);
	CHECK(is_live(env, "locked/inside.txt"));
	CHECK_EQ_INT(SEEN(env, "locked"), 1);
	CHECK_EQ_INT(N_PUBLISHED(env), 0);
	CHECK_EQ_INT(N_DELETED(env), 0);

	/* Asked about again and again within one scan period: still one warning. */
	for (int i = 0; i < 3; i++)
		indexer_publish_now(env->ix, CAT_GAMES, "secret.bin");
	indexer_publish_now(env->ix, CAT_GAMES, "locked/inside.txt");
	sleep_ms(400);
	CHECK_EQ_INT(log_count(LOG_WARNING, "games/secret.bin", NULL), 1);
	CHECK_EQ_INT(stats_of(env).unreadable, 3);
	CHECK(is_live(env, "locked/inside.txt"));

	/* Once per file per scan: a rescan warns once more, and counts only its own. */
	indexer_rescan(env->ix);
	CHECK(WAIT_FOR(log_count(-1, "scan done", NULL) == 2, DEADLINE_MS));
	st = stats_of(env);
	CHECK_EQ_INT(st.unreadable, 2);
	CHECK_EQ_INT(log_count(LOG_WARNING, "games/secret.bin", NULL), 2);
	CHECK_EQ_INT(GONE(env, "locked"), 0);
	CHECK_EQ_INT(N_DELETED(env), 0);
	CHECK(is_live(env, "locked/inside.txt"));
	env_stop(env);
out:
	return tu_failed_checks - failed;
}

static void chmod_db(const struct env *env, mode_t mode)
{
	static const char *const suffixes[] = { "", "-wal", "-shm" };
	char path[600];

	for (size_t i = 0; i < 3; i++) {
		snprintf(path, sizeof(path), "%s%s", env->db, suffixes[i]);
		chmod(path, mode);
	}
}

static void test_unreadable(void)
{
	struct env env;
	char path[512], state[512];
	int64_t secret_seq;
	pid_t pid;
	int status = 0;

	env_init(&env, 0.1);
	put_file(&env, "ok.txt", "fine\n");
	put_file(&env, "secret.bin", "hidden\n");
	make_dir(&env, "locked");
	put_file(&env, "locked/inside.txt", "inside\n");
	if (env_start(&env, 3600) != 0)
		goto out;
	CHECK(WAIT_FOR(is_live(&env, "locked/inside.txt") && is_live(&env, "ok.txt") &&
			       is_live(&env, "secret.bin"),
		       DEADLINE_MS));
	secret_seq = lookup(&env, "secret.bin").seq;
	env_stop(&env);

	games_path(&env, "secret.bin", path, sizeof(path));
	must(chmod(path, 0) == 0, path);
	games_path(&env, "locked", path, sizeof(path));
	must(chmod(path, 0) == 0, path);
	log_reset();
	rec_clear(&env.rec);

	if (geteuid() != 0) {
		unreadable_body(&env, secret_seq);
		goto restore;
	}
	/* Root reads everything: run the indexer as nobody, in a child. */
	catalog_close(env.cat);
	env.cat = NULL;
	snprintf(state, sizeof(state), "%s/state", env.dir);
	must(chmod(state, 0777) == 0 && chmod(env.dir, 0755) == 0 && chmod(scratch, 0755) == 0,
	     "chmod");
	chmod_db(&env, 0666);
	fflush(NULL);
	pid = fork();
	must(pid >= 0, "fork");
	if (pid == 0) {
		int failed;

		if (setgroups(0, NULL) < 0 || setgid(65534) < 0 || setuid(65534) < 0) {
			perror("dropping privileges");
			_exit(77);
		}
		must(catalog_open(env.db, &env.cat) == 0, "catalog_open as nobody");
		failed = unreadable_body(&env, secret_seq);
		catalog_close(env.cat);
		fflush(NULL);
		_exit(failed ? 1 : 0);
	}
	must(waitpid(pid, &status, 0) == pid, "waitpid");
	if (WIFEXITED(status) && WEXITSTATUS(status) == 77)
		printf("  (unreadable test skipped: cannot drop privileges)\n");
	else
		CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	must(catalog_open(env.db, &env.cat) == 0, "catalog_open");
	CHECK_EQ_INT(lookup(&env, "secret.bin").seq, secret_seq);
	CHECK(is_live(&env, "locked/inside.txt"));
restore:
	games_path(&env, "secret.bin", path, sizeof(path));
	chmod(path, 0644);
	games_path(&env, "locked", path, sizeof(path));
	chmod(path, 0755);
out:
	env_free(&env);
}

static void test_stop_is_prompt(void)
{
	struct env env;
	struct indexer *ix = NULL;
	char name[64];
	int64_t t0;

	env_init(&env, 0);
	for (int i = 0; i < 400; i++) {
		snprintf(name, sizeof(name), "many-%03d.txt", i);
		put_file(&env, name, name);
	}
	/* Stopped in the middle of the first scan: returns at once, leaves a usable catalog. */
	CHECK_EQ_INT(indexer_start(&env.cfg, env.cat, &rec_ops, &env.rec, 0, &ix), 0);
	sleep_ms(5);
	t0 = mono_ns();
	indexer_stop(ix);
	CHECK(mono_ns() - t0 < 2000LL * 1000000);
	if (env_start(&env, 3600) != 0)
		goto out;
	CHECK_EQ_INT(stats_of(&env).files, 400);
	CHECK(is_current(&env, "many-000.txt"));
	CHECK(is_current(&env, "many-399.txt"));
out:
	env_free(&env);
}

static void test_bad_arguments(void)
{
	struct env env;
	struct indexer *ix = NULL;
	struct mfs_config no_self;

	env_init(&env, 0.1);
	no_self = env.cfg;
	no_self.self = NULL;
	CHECK_EQ_INT(indexer_start(&no_self, env.cat, &rec_ops, &env.rec, 0, &ix), -EINVAL);
	CHECK(ix == NULL);
	CHECK_EQ_INT(indexer_start(&env.cfg, NULL, &rec_ops, &env.rec, 0, &ix), -EINVAL);
	/* No ops at all is allowed, and stop right after start is clean. */
	CHECK_EQ_INT(indexer_start(&env.cfg, env.cat, NULL, NULL, 0, &ix), 0);
	indexer_stop(ix);
	indexer_stop(NULL);
	env_free(&env);
}

/* Runs before main (TEST_MAIN owns main): one scratch directory for the whole run. */
__attribute__((constructor)) static void setup(void)
{
	if (!mkdtemp(scratch)) {
		perror("mkdtemp");
		exit(2);
	}
	log_set_sink(capture_log, NULL);
	log_set_level(LOG_DEBUG);
}

static int remove_one(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
	return remove(path) < 0 ? -1 : 0;
}

__attribute__((destructor)) static void teardown(void)
{
	nftw(scratch, remove_one, 16, FTW_DEPTH | FTW_PHYS);
	log_set_sink(NULL, NULL);
	log_reset();
}

TEST_MAIN(TEST(test_initial_scan_publishes), TEST(test_changed_file_rehashed),
	  TEST(test_inotify_new_and_deleted), TEST(test_deleted_found_by_rescan),
	  TEST(test_writing_sidecar), TEST(test_quiet_period), TEST(test_publish_now),
	  TEST(test_renamed_and_removed), TEST(test_missing_category_keeps_entries),
	  TEST(test_unreadable), TEST(test_stop_is_prompt), TEST(test_bad_arguments))
