/*
 * test_catalog — catalog.c against a real SQLite file in a scratch directory.
 *
 * Besides the API round trips, it checks what matters after a bad day: a version-1 catalog
 * built by hand (raw SQL, the v1 schema as shipped) is migrated with its data intact; a
 * catalog from a newer build, a non-SQLite file and someone else's SQLite file are refused
 * with -EPROTO; an unwritable location gives -EACCES; and a writer killed with SIGKILL at
 * random moments leaves a catalog whose every entry still agrees with its chunks and whose
 * seqs were never reused. Log lines go to a capture sink so refusals can be checked for a
 * message.
 */
#include "sync/catalog.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "sync/log.h"
#include "sync/util.h"
#include "tests/unit/logcapture.h"
#include "tests/unit/rawsql.h"
#include "tests/unit/testutil.h"

#define MIB ((uint64_t)1 << 20)

static char tmpdir[] = "/tmp/meshfs-test-catalog-XXXXXX";

/* ---- helpers ---- */

static char *db_path(const char *name)
{
	static char buf[512];

	snprintf(buf, sizeof(buf), "%s/%s", tmpdir, name);
	return buf;
}

/* Runs @sql on the file at @path with a raw connection; fails the test on error. */
static void raw_exec(const char *path, const char *sql)
{
	sqlite3 *db = NULL;
	char *err = NULL;

	if (sqlite3_open(path, &db) != SQLITE_OK ||
	    sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK) {
		fprintf(stderr, "raw_exec %s: %s\n", sql, err ? err : sqlite3_errmsg(db));
		CHECK(0);
	}
	sqlite3_free(err);
	sqlite3_close(db);
}

static char *raw_text(const char *path, const char *sql)
{
	sqlite3_stmt *st = NULL;
	sqlite3 *db = NULL;
	char *v = NULL;

	if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
	    sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK &&
	    sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
		v = strdup((const char *)sqlite3_column_text(st, 0));
	else
		fprintf(stderr, "raw_text %s: %s\n", sql, sqlite3_errmsg(db));
	sqlite3_finalize(st);
	sqlite3_close(db);
	return v;
}

static struct catalog *open_ok(const char *name)
{
	struct catalog *cat = NULL;
	int ret = catalog_open(db_path(name), &cat);

	CHECK_EQ_INT(ret, 0);
	if (ret) {
		fprintf(stderr, "catalog_open %s failed; exiting\n", name);
		exit(1);
	}
	return cat;
}

static struct cat_entry mk_entry(const char *host, const char *category, const char *path,
				 uint64_t size, uint64_t tag)
{
	return (struct cat_entry){
		.host = host,
		.category = category,
		.path = path,
		.size = size,
		.mtime_ns = 1700000000123456789LL + (int64_t)tag,
		.hash = { .hi = tag, .lo = size },
		.origin = "someone-else", /* must be ignored: origin = host */
		.seq = 12345,		  /* must be ignored */
		.dev = 0x801,
		.ino = 1000 + tag,
		.ctime_ns = 1700000000000000000LL,
		.confirmed_at = 1700000000,
	};
}

static size_t n_chunks_for(uint64_t size)
{
	return (size + HASH_CHUNK_SIZE - 1) / HASH_CHUNK_SIZE;
}

/* Chunk i of an entry tagged @tag: hi = tag, lo = i, so a chunk can be told whose it is. */
static struct hash128 *mk_chunks(uint64_t size, uint64_t tag)
{
	size_t n = n_chunks_for(size);
	struct hash128 *c = calloc(n ? n : 1, sizeof(*c));

	for (size_t i = 0; c && i < n; i++)
		c[i] = (struct hash128){ .hi = tag, .lo = i };
	return c;
}

static int publish(struct catalog *cat, const char *host, const char *category,
		   const char *path, uint64_t size, uint64_t tag, int64_t *seq)
{
	struct cat_entry e = mk_entry(host, category, path, size, tag);
	struct hash128 *c = mk_chunks(size, tag);
	int ret = catalog_publish_local(cat, &e, c, n_chunks_for(size), seq);

	free(c);
	return ret;
}
/* Block hashes of a published version: slices across chunks, one-block chunks, refusals. */
static void test_blocks(void)
{
	struct catalog *cat = open_ok("blocks.db");
	uint64_t size = 4 * MIB + 64 * 1024 + 10; /* chunk 0: 64 blocks; chunk 1: 2 blocks */
	size_t nb = (size_t)((size + HASH_BLOCK_SIZE - 1) / HASH_BLOCK_SIZE);
	struct cat_entry e = mk_entry("me", "models", "big.pth", size, 3);
	struct hash128 *c = mk_chunks(size, 3), *b = calloc(nb, sizeof(*b)), out[4], other;
	struct cat_publish pub = { 0 };

	if (!cat || !c || !b)
		goto out;
	for (size_t i = 0; i < nb; i++)
		b[i] = (struct hash128){ .hi = 1000 + i, .lo = 3 };
	pub.e = e;
	pub.chunks = c;
	pub.n_chunks = n_chunks_for(size);
	pub.blocks = b;
	pub.n_blocks = nb - 1;
	CHECK_EQ_INT(catalog_publish_local_batch(cat, &pub, 1), -EINVAL); /* wrong count */
	pub.n_blocks = nb;
	CHECK_EQ_INT(catalog_publish_local_batch(cat, &pub, 1), 0);

	/* Across the chunk boundary: blocks 63 (chunk 0) .. 65 (chunk 1, the last). */
	CHECK_EQ_INT(catalog_get_blocks(cat, "me", "models", "big.pth", &e.hash, 63, 3, out), 0);
	for (size_t i = 0; i < 3; i++)
		CHECK(out[i].hi == 1000 + 63 + i && out[i].lo == 3);
	/* Past the end, another version, another host, a missing path: not there. */
	CHECK_EQ_INT(catalog_get_blocks(cat, "me", "models", "big.pth", &e.hash, 65, 2, out),
		     -ENOENT);
	other = (struct hash128){ .hi = 99, .lo = 99 };
	CHECK_EQ_INT(catalog_get_blocks(cat, "me", "models", "big.pth", &other, 0, 1, out),
		     -ENOENT);
	CHECK_EQ_INT(catalog_get_blocks(cat, "you", "models", "big.pth", &e.hash, 0, 1, out),
		     -ENOENT);
	CHECK_EQ_INT(catalog_get_blocks(cat, "me", "models", "nope", &e.hash, 0, 1, out),
		     -ENOENT);

	/* Published without blocks: unknown for a chunk of several blocks... */
	CHECK_EQ_INT(publish(cat, "me", "models", "old.pth", 2 * 64 * 1024, 4, NULL), 0);
	e = mk_entry("me", "models", "old.pth", 2 * 64 * 1024, 4);
	CHECK_EQ_INT(catalog_get_blocks(cat, "me", "models", "old.pth", &e.hash, 0, 1, out),
		     -ENODATA);
	/* ...while a chunk of one block has its chunk hash as its block hash. */
	CHECK_EQ_INT(publish(cat, "me", "models", "small.pth", 100, 5, NULL), 0);
	e = mk_entry("me", "models", "small.pth", 100, 5);
	CHECK_EQ_INT(catalog_get_blocks(cat, "me", "models", "small.pth", &e.hash, 0, 1, out), 0);
	CHECK(out[0].hi == 5 && out[0].lo == 0);
out:
	free(b);
	free(c);
	catalog_close(cat);
}


struct got {
	int calls;
	char host[64], category[64], path[256], origin[64];
	struct cat_entry e;
};

static void get_cb(void *arg, const struct cat_entry *e)
{
	struct got *g = arg;

	g->calls++;
	g->e = *e;
	snprintf(g->host, sizeof(g->host), "%s", e->host);
	snprintf(g->category, sizeof(g->category), "%s", e->category);
	snprintf(g->path, sizeof(g->path), "%s", e->path);
	snprintf(g->origin, sizeof(g->origin), "%s", e->origin);
	g->e.host = g->e.category = g->e.path = g->e.origin = NULL;
}

/* Collects a walk as "host:category/path@seq[-]" lines (- for deleted). */
struct walk {
	char text[4096];
	int count, stop_after;
};

static int walk_cb(void *arg, const struct cat_entry *e)
{
	struct walk *w = arg;
	size_t used = strlen(w->text);

	snprintf(w->text + used, sizeof(w->text) - used, "%s:%s/%s@%lld%s\n", e->host,
		 e->category, e->path, (long long)e->seq, e->deleted ? "-" : "");
	w->count++;
	return w->stop_after && w->count == w->stop_after ? 42 : 0;
}

/* ---- tests ---- */

static void test_open_create(void)
{
	struct catalog *cat = NULL;
	char *mode;

	CHECK_EQ_INT(mkdir_p(db_path("state/deep"), 0755), 0);
	CHECK_EQ_INT(catalog_open(db_path("state/deep/catalog.db"), &cat), 0);
	CHECK(cat != NULL);
	if (!cat)
		return;
	CHECK_EQ_INT(catalog_schema_version(cat), CATALOG_SCHEMA_VERSION);
	CHECK_EQ_INT(CATALOG_SCHEMA_VERSION, 4);
	catalog_close(cat);
	CHECK_EQ_INT(raw_int(db_path("state/deep/catalog.db"), "PRAGMA user_version"), 4);
	mode = raw_text(db_path("state/deep/catalog.db"), "PRAGMA journal_mode");
	CHECK_EQ_STR(mode, "wal");
	free(mode);
	CHECK_EQ_INT(raw_int(db_path("state/deep/catalog.db"),
			     "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name IN "
			     "('meta', 'hosts', 'entries', 'chunks', 'local', 'queue')"),
		     6);

	cat = open_ok("state/deep/catalog.db"); /* reopening an up-to-date catalog */
	CHECK_EQ_INT(catalog_schema_version(cat), CATALOG_SCHEMA_VERSION);
	catalog_close(cat);
	catalog_close(NULL);
}

/* An in-memory catalog works the same (handy for other modules' tests) and logs no warning. */
static void test_open_memory(void)
{
	struct catalog *cat = NULL;
	int64_t seq = 0;

	cap_reset();
	CHECK_EQ_INT(catalog_open(":memory:", &cat), 0);
	if (!cat)
		return;
	CHECK_EQ_INT(catalog_schema_version(cat), CATALOG_SCHEMA_VERSION);
	CHECK_EQ_INT(publish(cat, "me", "games", "a", 1, 1, &seq), 0);
	CHECK_EQ_INT(seq, 1);
	catalog_close(cat);
	CHECK(strstr(cap_buf, "WAL") == NULL);
}

static void test_open_bad_args(void)
{
	struct catalog *cat = NULL;

	CHECK_EQ_INT(catalog_open(db_path("no/such/dir/catalog.db"), &cat), -ENOENT);
	CHECK(cat == NULL);
	CHECK_EQ_INT(catalog_open("", &cat), -EINVAL);
	CHECK_EQ_INT(catalog_open(tmpdir, &cat), -EISDIR); /* a directory is not a catalog */
}

/*
 * Opens @path in a child that is not root (root writes anywhere) and returns its result,
 * sent back as the exit status.
 */
static int open_as_nobody(const char *path)
{
	pid_t pid = fork();
	int status = 0;

	if (pid < 0)
		return -999;
	if (pid == 0) {
		struct catalog *cat = NULL;
		int ret;

		if (geteuid() == 0 &&
		    (setgroups(0, NULL) < 0 || setgid(65534) < 0 || setuid(65534) < 0))
			_exit(200);
		ret = catalog_open(path, &cat);
		catalog_close(cat);
		_exit(-ret & 0xff);
	}
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status))
		return -998;
	return -WEXITSTATUS(status);
}

static void test_open_unwritable(void)
{
	char ro[512], rw[512], path[600];
	struct catalog *cat;

	snprintf(ro, sizeof(ro), "%s", db_path("ro"));
	snprintf(rw, sizeof(rw), "%s", db_path("rw"));
	CHECK_EQ_INT(chmod(tmpdir, 0755), 0); /* let the unprivileged child in */
	CHECK_EQ_INT(mkdir(ro, 0755), 0);
	CHECK_EQ_INT(mkdir(rw, 0777), 0);
	CHECK_EQ_INT(chmod(rw, 0777), 0);

	/* A new catalog in a directory it may not write. */
	snprintf(path, sizeof(path), "%s/new.db", ro);
	CHECK_EQ_INT(open_as_nobody(path), -EACCES);
	CHECK(access(path, F_OK) < 0);

	/* An existing catalog it may read but not write. */
	snprintf(path, sizeof(path), "%s/readonly.db", rw);
	cat = open_ok("rw/readonly.db");
	catalog_close(cat);
	CHECK_EQ_INT(chmod(path, 0444), 0);
	CHECK_EQ_INT(open_as_nobody(path), -EACCES);

	/* A writable catalog in a read-only directory: WAL cannot create its -wal/-shm files. */
	snprintf(path, sizeof(path), "%s/walless.db", ro);
	cat = open_ok("ro/walless.db");
	catalog_close(cat);
	CHECK_EQ_INT(chmod(path, 0666), 0);
	CHECK_EQ_INT(open_as_nobody(path), -EACCES);
	CHECK_EQ_INT(chmod(tmpdir, 0700), 0);
}

static void test_publish_get(void)
{
	struct catalog *cat = open_ok("publish.db");
	struct hash128 *chunks = NULL;
	struct got g = { 0 };
	struct cat_entry e;
	int64_t seq = 0;
	size_t n = 0;

	e = mk_entry("me", "games", "sq8/game_1.db", 10 * MIB, 7);
	e.ino = UINT64_MAX - 3; /* survives the trip through a signed column */
	e.dev = (uint64_t)1 << 63;
	{
		struct hash128 *c = mk_chunks(e.size, 7);

		CHECK_EQ_INT(catalog_publish_local(cat, &e, c, 3, &seq), 0);
		free(c);
	}
	CHECK_EQ_INT(seq, 1);
	CHECK_EQ_INT(catalog_get(cat, "me", "games", "sq8/game_1.db", get_cb, &g), 0);
	CHECK_EQ_INT(g.calls, 1);
	CHECK_EQ_STR(g.host, "me");
	CHECK_EQ_STR(g.category, "games");
	CHECK_EQ_STR(g.path, "sq8/game_1.db");
	CHECK_EQ_STR(g.origin, "me");
	CHECK(g.e.size == 10 * MIB);
	CHECK_EQ_INT(g.e.mtime_ns, e.mtime_ns);
	CHECK(hash_equal(&g.e.hash, &e.hash));
	CHECK_EQ_INT(g.e.seq, 1);
	CHECK(!g.e.deleted);
	CHECK(g.e.dev == e.dev);
	CHECK(g.e.ino == e.ino);
	CHECK_EQ_INT(g.e.ctime_ns, e.ctime_ns);
	CHECK_EQ_INT(g.e.confirmed_at, e.confirmed_at);

	CHECK_EQ_INT(catalog_get_chunks(cat, "me", "games", "sq8/game_1.db", &chunks, &n), 0);
	CHECK_EQ_INT(n, 3);
	for (size_t i = 0; chunks && i < n; i++)
		CHECK(chunks[i].hi == 7 && chunks[i].lo == i);
	free(chunks);

	/* A new version replaces the chunk list and takes the next seq. */
	CHECK_EQ_INT(publish(cat, "me", "games", "sq8/game_1.db", 4 * MIB + 1, 8, &seq), 0);
	CHECK_EQ_INT(seq, 2);
	chunks = NULL;
	CHECK_EQ_INT(catalog_get_chunks(cat, "me", "games", "sq8/game_1.db", &chunks, &n), 0);
	CHECK_EQ_INT(n, 2);
	for (size_t i = 0; chunks && i < n; i++)
		CHECK(chunks[i].hi == 8 && chunks[i].lo == i);
	free(chunks);
	CHECK_EQ_INT(raw_int(db_path("publish.db"), "SELECT count(*) FROM chunks"), 2);
	CHECK_EQ_INT(raw_int(db_path("publish.db"), "SELECT count(*) FROM entries"), 1);

	/* An empty file: no chunks, and still an entry. */
	CHECK_EQ_INT(publish(cat, "me", "games", "empty", 0, 9, &seq), 0);
	chunks = (struct hash128 *)&e;
	n = 99;
	CHECK_EQ_INT(catalog_get_chunks(cat, "me", "games", "empty", &chunks, &n), 0);
	CHECK_EQ_INT(n, 0);
	CHECK(chunks == NULL);

	/* confirmed_at 0 means "now": publishing is the origin confirming its file. */
	e = mk_entry("me", "models", "m.pt", 5, 10);
	e.confirmed_at = 0;
	{
		struct hash128 c = { 10, 0 };
		int64_t before = now_s();

		CHECK_EQ_INT(catalog_publish_local(cat, &e, &c, 1, NULL), 0);
		memset(&g, 0, sizeof(g));
		CHECK_EQ_INT(catalog_get(cat, "me", "models", "m.pt", get_cb, &g), 0);
		CHECK(g.e.confirmed_at >= before && g.e.confirmed_at <= now_s());
	}

	memset(&g, 0, sizeof(g));
	CHECK_EQ_INT(catalog_get(cat, "me", "games", "nope", get_cb, &g), -ENOENT);
	CHECK_EQ_INT(catalog_get(cat, "other", "games", "sq8/game_1.db", get_cb, &g), -ENOENT);
	CHECK_EQ_INT(g.calls, 0);
	CHECK_EQ_INT(catalog_get_chunks(cat, "me", "games", "nope", &chunks, &n), -ENOENT);
	catalog_close(cat);
}

static void test_publish_invalid(void)
{
	static const char *const bad_paths[] = { "", "/abs", "../up", "a/../b", "a//b", "a/",
						 "./a", "a\nb" };
	struct catalog *cat = open_ok("invalid.db");
	struct hash128 c[3] = { { 1, 0 }, { 1, 1 }, { 1, 2 } };
	struct cat_entry e;
	int64_t seq = -1;

	for (size_t i = 0; i < sizeof(bad_paths) / sizeof(bad_paths[0]); i++) {
		e = mk_entry("me", "games", bad_paths[i], 1, 1);
		CHECK_EQ_INT(catalog_publish_local(cat, &e, c, 1, &seq), -EINVAL);
	}
	e = mk_entry("me", "ga/mes", "x", 1, 1);
	CHECK_EQ_INT(catalog_publish_local(cat, &e, c, 1, &seq), -EINVAL);
	e = mk_entry("", "games", "x", 1, 1);
	CHECK_EQ_INT(catalog_publish_local(cat, &e, c, 1, &seq), -EINVAL);
	e = mk_entry(NULL, "games", "x", 1, 1);
	CHECK_EQ_INT(catalog_publish_local(cat, &e, c, 1, &seq), -EINVAL);

	/* The chunk list must cover the size exactly. */
	e = mk_entry("me", "games", "x", 8 * MIB, 1);
	CHECK_EQ_INT(catalog_publish_local(cat, &e, c, 3, &seq), -EINVAL);
	CHECK_EQ_INT(catalog_publish_local(cat, &e, c, 1, &seq), -EINVAL);
	CHECK_EQ_INT(catalog_publish_local(cat, &e, NULL, 2, &seq), -EINVAL);
	e = mk_entry("me", "games", "x", 0, 1);
	CHECK_EQ_INT(catalog_publish_local(cat, &e, c, 1, &seq), -EINVAL);
	CHECK_EQ_INT(seq, -1);

	/* Nothing was recorded and no seq was used up. */
	CHECK_EQ_INT(catalog_max_seq(cat, "me", &seq), 0);
	CHECK_EQ_INT(seq, 0);
	CHECK_EQ_INT(raw_int(db_path("invalid.db"), "SELECT count(*) FROM entries"), 0);
	catalog_close(cat);
}

static void test_seq_monotonic(void)
{
	struct catalog *cat = open_ok("seq.db");
	struct hash128 *chunks = NULL;
	struct got g = { 0 };
	int64_t seq = 0, max = -1;
	size_t n = 0;

	CHECK_EQ_INT(catalog_max_seq(cat, "me", &max), 0);
	CHECK_EQ_INT(max, 0);
	CHECK_EQ_INT(publish(cat, "me", "games", "a", 1, 1, &seq), 0);
	CHECK_EQ_INT(seq, 1);
	CHECK_EQ_INT(publish(cat, "me", "games", "b", 5 * MIB, 2, &seq), 0);
	CHECK_EQ_INT(seq, 2);
	CHECK_EQ_INT(publish(cat, "me", "games", "c", 3, 3, &seq), 0);
	CHECK_EQ_INT(seq, 3);

	/* A delete is a change: it takes a new seq and drops the chunks. */
	CHECK_EQ_INT(catalog_delete_local(cat, "me", "games", "b", &seq), 0);
	CHECK_EQ_INT(seq, 4);
	CHECK_EQ_INT(catalog_get(cat, "me", "games", "b", get_cb, &g), 0);
	CHECK(g.e.deleted);
	CHECK_EQ_INT(g.e.seq, 4);
	CHECK(g.e.size == 5 * MIB); /* the tombstone keeps what was deleted */
	CHECK_EQ_INT(catalog_get_chunks(cat, "me", "games", "b", &chunks, &n), -ENOENT);
	CHECK_EQ_INT(raw_int(db_path("seq.db"),
			     "SELECT count(*) FROM chunks c JOIN entries e ON e.id = c.entry_id "
			     "WHERE e.path = 'b'"),
		     0);

	/* Deleting what is not there changes nothing and uses no seq. */
	seq = -1;
	CHECK_EQ_INT(catalog_delete_local(cat, "me", "games", "b", &seq), -ENOENT);
	CHECK_EQ_INT(catalog_delete_local(cat, "me", "games", "never", &seq), -ENOENT);
	CHECK_EQ_INT(catalog_delete_local(cat, "me", "games", "../x", &seq), -EINVAL);
	CHECK_EQ_INT(seq, -1);
	CHECK_EQ_INT(catalog_max_seq(cat, "me", &max), 0);
	CHECK_EQ_INT(max, 4);

	/* Coming back from the dead is a new version with a new seq. */
	CHECK_EQ_INT(publish(cat, "me", "games", "b", 1, 4, &seq), 0);
	CHECK_EQ_INT(seq, 5);
	memset(&g, 0, sizeof(g));
	CHECK_EQ_INT(catalog_get(cat, "me", "games", "b", get_cb, &g), 0);
	CHECK(!g.e.deleted);

	/* Seqs are per host. */
	CHECK_EQ_INT(publish(cat, "other", "games", "a", 1, 5, &seq), 0);
	CHECK_EQ_INT(seq, 1);
	CHECK_EQ_INT(catalog_max_seq(cat, "other", &max), 0);
	CHECK_EQ_INT(max, 1);
	CHECK_EQ_INT(catalog_max_seq(cat, "nobody", &max), 0);
	CHECK_EQ_INT(max, 0);

	/* The latest seq is gone from entries (tampered with): it is still never reused. */
	CHECK_EQ_INT(publish(cat, "me", "games", "d", 1, 6, &seq), 0);
	CHECK_EQ_INT(seq, 6);
	catalog_close(cat);
	raw_exec(db_path("seq.db"), "DELETE FROM entries WHERE host = 'me' AND seq = 6");
	cat = open_ok("seq.db");
	CHECK_EQ_INT(catalog_max_seq(cat, "me", &max), 0);
	CHECK_EQ_INT(max, 6);
	CHECK_EQ_INT(publish(cat, "me", "games", "d", 1, 7, &seq), 0);
	CHECK_EQ_INT(seq, 7);
	CHECK_EQ_INT(raw_int(db_path("seq.db"), "SELECT last_seq FROM hosts WHERE name = 'me'"), 7);
	catalog_close(cat);
}

static void test_foreach_changes(void)
{
	struct catalog *cat = open_ok("walk.db");
	struct walk w = { 0 };
	int64_t seq;

	CHECK_EQ_INT(publish(cat, "me", "games", "a", 1, 1, &seq), 0);	 /* me 1 */
	CHECK_EQ_INT(publish(cat, "me", "models", "b", 2, 2, &seq), 0);	 /* me 2 */
	CHECK_EQ_INT(publish(cat, "peer", "games", "a", 3, 3, &seq), 0); /* peer 1 */
	CHECK_EQ_INT(publish(cat, "me", "games", "c", 4, 4, &seq), 0);	 /* me 3 */
	CHECK_EQ_INT(publish(cat, "me", "games", "a", 5, 5, &seq), 0);	 /* me 4 */
	CHECK_EQ_INT(catalog_delete_local(cat, "me", "models", "b", &seq), 0); /* me 5 */

	CHECK_EQ_INT(catalog_foreach(cat, "me", walk_cb, &w), 0);
	CHECK_EQ_STR(w.text, "me:games/c@3\nme:games/a@4\n");

	memset(&w, 0, sizeof(w));
	CHECK_EQ_INT(catalog_foreach(cat, NULL, walk_cb, &w), 0);
	CHECK_EQ_STR(w.text, "peer:games/a@1\nme:games/c@3\nme:games/a@4\n");

	memset(&w, 0, sizeof(w));
	CHECK_EQ_INT(catalog_foreach(cat, "nobody", walk_cb, &w), 0);
	CHECK_EQ_INT(w.count, 0);

	/* A non-zero return stops the walk and comes back. */
	memset(&w, 0, sizeof(w));
	w.stop_after = 1;
	CHECK_EQ_INT(catalog_foreach(cat, NULL, walk_cb, &w), 42);
	CHECK_EQ_INT(w.count, 1);

	memset(&w, 0, sizeof(w));
	CHECK_EQ_INT(catalog_changes(cat, "me", 0, walk_cb, &w), 0);
	CHECK_EQ_STR(w.text, "me:games/c@3\nme:games/a@4\nme:models/b@5-\n");

	memset(&w, 0, sizeof(w));
	CHECK_EQ_INT(catalog_changes(cat, "me", 3, walk_cb, &w), 0);
	CHECK_EQ_STR(w.text, "me:games/a@4\nme:models/b@5-\n");

	memset(&w, 0, sizeof(w));
	CHECK_EQ_INT(catalog_changes(cat, "me", 5, walk_cb, &w), 0);
	CHECK_EQ_INT(w.count, 0);

	memset(&w, 0, sizeof(w));
	w.stop_after = 2;
	CHECK_EQ_INT(catalog_changes(cat, "me", 0, walk_cb, &w), 42);
	CHECK_EQ_INT(w.count, 2);

	memset(&w, 0, sizeof(w));
	CHECK_EQ_INT(catalog_changes(cat, "peer", 0, walk_cb, &w), 0);
	CHECK_EQ_STR(w.text, "peer:games/a@1\n");
	catalog_close(cat);
}

static int reenter_cb(void *arg, const struct cat_entry *e)
{
	struct catalog *cat = arg;
	int64_t seq;

	/* Not allowed: the catalog mutex is held. It must fail, not hang. */
	return catalog_max_seq(cat, e->host, &seq);
}

static void test_callback_reentry(void)
{
	struct catalog *cat = open_ok("reenter.db");
	int64_t seq;

	CHECK_EQ_INT(publish(cat, "me", "games", "a", 1, 1, &seq), 0);
	cap_reset();
	CHECK_EQ_INT(catalog_foreach(cat, "me", reenter_cb, cat), -EDEADLK);
	CHECK(cap_has("own callbacks"));
	/* And the catalog still works afterwards. */
	CHECK_EQ_INT(publish(cat, "me", "games", "b", 1, 2, &seq), 0);
	CHECK_EQ_INT(seq, 2);
	catalog_close(cat);
}

static void test_confirm(void)
{
	struct catalog *cat = open_ok("confirm.db");
	struct got g = { 0 };
	int64_t seq;

	CHECK_EQ_INT(publish(cat, "me", "games", "a", 1, 1, &seq), 0);
	CHECK_EQ_INT(catalog_confirm(cat, "me", "games", "a", 1800000000), 0);
	CHECK_EQ_INT(catalog_get(cat, "me", "games", "a", get_cb, &g), 0);
	CHECK_EQ_INT(g.e.confirmed_at, 1800000000);
	CHECK_EQ_INT(g.e.seq, 1); /* confirming is not a change */
	CHECK_EQ_INT(catalog_max_seq(cat, "me", &seq), 0);
	CHECK_EQ_INT(seq, 1);
	CHECK_EQ_INT(catalog_confirm(cat, "me", "games", "nope", 1), -ENOENT);
	CHECK_EQ_INT(catalog_delete_local(cat, "me", "games", "a", &seq), 0);
	CHECK_EQ_INT(catalog_confirm(cat, "me", "games", "a", 1900000000), -ENOENT);
	catalog_close(cat);
}

static void test_totals(void)
{
	struct catalog *cat = open_ok("totals.db");
	uint64_t files = 99, bytes = 99;
	int64_t seq;

	CHECK_EQ_INT(catalog_totals(cat, "me", &files, &bytes), 0);
	CHECK(files == 0 && bytes == 0);
	CHECK_EQ_INT(publish(cat, "me", "games", "a", 10, 1, &seq), 0);
	CHECK_EQ_INT(publish(cat, "me", "games", "b", 9 * MIB, 2, &seq), 0);
	CHECK_EQ_INT(publish(cat, "me", "models", "c", 100, 3, &seq), 0);
	CHECK_EQ_INT(publish(cat, "peer", "games", "a", 1000, 4, &seq), 0);
	CHECK_EQ_INT(catalog_delete_local(cat, "me", "models", "c", &seq), 0);
	CHECK_EQ_INT(catalog_totals(cat, "me", &files, &bytes), 0);
	CHECK_EQ_INT(files, 2);
	CHECK(bytes == 9 * MIB + 10);
	CHECK_EQ_INT(catalog_totals(cat, "peer", &files, &bytes), 0);
	CHECK(files == 1 && bytes == 1000);
	CHECK_EQ_INT(catalog_totals(cat, NULL, &files, &bytes), 0);
	CHECK(files == 3 && bytes == 9 * MIB + 1010);
	catalog_close(cat);
}

/* A batch is recorded whole, in order, or not at all; the totals follow every kind of change. */
static void test_publish_batch_and_totals(void)
{
	struct catalog *cat = open_ok("batch.db");
	struct cat_publish pubs[3];
	struct hash128 chunk = { 1, 2 };
	uint64_t files = 0, bytes = 0;
	int64_t seq;

	memset(pubs, 0, sizeof(pubs));
	pubs[0].e = mk_entry("me", "games", "x1", 10, 1);
	pubs[1].e = mk_entry("me", "games", "x2", 20, 2);
	pubs[2].e = mk_entry("me", "games", "../bad", 30, 3);
	for (int i = 0; i < 3; i++) {
		pubs[i].chunks = &chunk;
		pubs[i].n_chunks = 1;
	}
	/* One refused entry: nothing of the batch is recorded. */
	CHECK_EQ_INT(catalog_publish_local_batch(cat, pubs, 3), -EINVAL);
	CHECK_EQ_INT(catalog_totals(cat, "me", &files, &bytes), 0);
	CHECK_EQ_INT(files, 0);
	CHECK_EQ_INT(catalog_max_seq(cat, "me", &seq), 0);
	CHECK_EQ_INT(seq, 0);
	/* Valid: all recorded, with increasing seqs in array order. */
	CHECK_EQ_INT(catalog_publish_local_batch(cat, pubs, 2), 0);
	CHECK(pubs[0].seq > 0 && pubs[1].seq == pubs[0].seq + 1);
	CHECK_EQ_INT(catalog_totals(cat, "me", &files, &bytes), 0);
	CHECK(files == 2 && bytes == 30);
	/* Replacing, deleting and another host's entries keep the totals right. */
	CHECK_EQ_INT(publish(cat, "me", "games", "x1", 100, 4, &seq), 0);
	CHECK_EQ_INT(catalog_delete_local(cat, "me", "games", "x2", &seq), 0);
	CHECK_EQ_INT(catalog_totals(cat, "me", &files, &bytes), 0);
	CHECK(files == 1 && bytes == 100);
	struct cat_entry r = mk_entry("peer", "models", "m", 7, 5);
	r.seq = 3;
	CHECK_EQ_INT(catalog_apply_remote(cat, "peer", &r, 1, 3, 1700000000), 0);
	CHECK_EQ_INT(catalog_totals(cat, "peer", &files, &bytes), 0);
	CHECK(files == 1 && bytes == 7);
	CHECK_EQ_INT(catalog_reset_host(cat, "peer"), 0);
	CHECK_EQ_INT(catalog_totals(cat, "peer", &files, &bytes), 0);
	CHECK(files == 0 && bytes == 0);
	catalog_close(cat);
}

static void test_pins(void)
{
	struct catalog *cat = open_ok("pins.db");
	bool pinned = true;

	CHECK_EQ_INT(catalog_get_pin(cat, "models", "best.pt", &pinned), 0);
	CHECK(!pinned);
	/* Unpinning what was never pinned is fine and leaves no row behind. */
	CHECK_EQ_INT(catalog_set_pin(cat, "models", "best.pt", false), 0);
	CHECK_EQ_INT(raw_int(db_path("pins.db"), "SELECT count(*) FROM local"), 0);

	CHECK_EQ_INT(catalog_set_pin(cat, "models", "best.pt", true), 0);
	CHECK_EQ_INT(catalog_set_pin(cat, "models", "best.pt", true), 0);
	CHECK_EQ_INT(catalog_set_pin(cat, "games", "", true), 0); /* a whole category */
	CHECK_EQ_INT(catalog_get_pin(cat, "models", "best.pt", &pinned), 0);
	CHECK(pinned);
	CHECK_EQ_INT(catalog_get_pin(cat, "models", "other.pt", &pinned), 0);
	CHECK(!pinned);
	CHECK_EQ_INT(catalog_set_pin(cat, "models", "../x", true), -EINVAL);
	CHECK_EQ_INT(catalog_set_pin(cat, "", "x", true), -EINVAL);
	catalog_close(cat);

	cat = open_ok("pins.db");
	CHECK_EQ_INT(catalog_get_pin(cat, "models", "best.pt", &pinned), 0);
	CHECK(pinned);
	CHECK_EQ_INT(catalog_get_pin(cat, "games", "", &pinned), 0);
	CHECK(pinned);
	CHECK_EQ_INT(catalog_set_pin(cat, "models", "best.pt", false), 0);
	CHECK_EQ_INT(catalog_get_pin(cat, "models", "best.pt", &pinned), 0);
	CHECK(!pinned);
	catalog_close(cat);
	CHECK_EQ_INT(raw_int(db_path("pins.db"), "SELECT count(*) FROM local WHERE pinned"), 1);
}

static void test_meta(void)
{
	struct catalog *cat = open_ok("meta.db");
	char *v = NULL;

	CHECK_EQ_INT(catalog_meta_get(cat, "node", &v), -ENOENT);
	CHECK(v == NULL);
	CHECK_EQ_INT(catalog_meta_set(cat, "node", "train-1"), 0);
	CHECK_EQ_INT(catalog_meta_get(cat, "node", &v), 0);
	CHECK_EQ_STR(v, "train-1");
	free(v);
	v = NULL;
	CHECK_EQ_INT(catalog_meta_set(cat, "node", "train-2"), 0);
	CHECK_EQ_INT(catalog_meta_set(cat, "empty", ""), 0);
	CHECK_EQ_INT(catalog_meta_set(cat, "x", NULL), -EINVAL);
	catalog_close(cat);

	cat = open_ok("meta.db");
	CHECK_EQ_INT(catalog_meta_get(cat, "node", &v), 0);
	CHECK_EQ_STR(v, "train-2");
	free(v);
	v = NULL;
	CHECK_EQ_INT(catalog_meta_get(cat, "empty", &v), 0);
	CHECK_EQ_STR(v, "");
	free(v);
	catalog_close(cat);
}

/* The version-1 schema exactly as shipped, written out here independently of catalog.c. */
static const char v1_schema[] =
	"BEGIN;"
	"CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
	"CREATE TABLE hosts (name TEXT PRIMARY KEY, last_seq INTEGER NOT NULL DEFAULT 0,"
	"  last_seen INTEGER NOT NULL DEFAULT 0);"
	"CREATE TABLE entries (id INTEGER PRIMARY KEY, host TEXT NOT NULL,"
	"  category TEXT NOT NULL, path TEXT NOT NULL, size INTEGER NOT NULL CHECK (size >= 0),"
	"  mtime_ns INTEGER NOT NULL, hash BLOB NOT NULL CHECK (length(hash) = 16),"
	"  origin TEXT NOT NULL, seq INTEGER NOT NULL, deleted INTEGER NOT NULL DEFAULT 0,"
	"  dev INTEGER NOT NULL DEFAULT 0, ino INTEGER NOT NULL DEFAULT 0,"
	"  ctime_ns INTEGER NOT NULL DEFAULT 0, confirmed_at INTEGER NOT NULL DEFAULT 0,"
	"  UNIQUE (host, category, path));"
	"CREATE INDEX entries_host_seq ON entries (host, seq);"
	"CREATE TABLE chunks (entry_id INTEGER NOT NULL REFERENCES entries (id) ON DELETE CASCADE,"
	"  idx INTEGER NOT NULL, hash BLOB NOT NULL CHECK (length(hash) = 16),"
	"  PRIMARY KEY (entry_id, idx)) WITHOUT ROWID;"
	"PRAGMA application_id = 1836279910;"
	"PRAGMA user_version = 1;"
	"COMMIT;";

static void test_migrate_v1_to_v2(void)
{
	const char *path = db_path("v1.db");
	struct hash128 *chunks = NULL;
	struct catalog *cat;
	struct got g = { 0 };
	struct walk w = { 0 };
	int64_t seq = 0;
	char *v = NULL;
	bool pinned = true;
	size_t n = 0;

	raw_exec(path, v1_schema);
	raw_exec(path,
		 "INSERT INTO meta VALUES ('node', 'train-1');"
		 "INSERT INTO hosts VALUES ('me', 9, 0), ('peer', 4, 1700000000);"
		 "INSERT INTO entries (id, host, category, path, size, mtime_ns, hash, origin, seq,"
		 "  deleted, dev, ino, ctime_ns, confirmed_at) VALUES"
		 "  (1, 'me', 'games', 'g1.db', 5242880, 11,"
		 "   x'00000000000000070000000000500000', 'me', 3, 0, 2049, 77, 12, 1700000001),"
		 "  (2, 'me', 'games', 'old.db', 10, 12,"
		 "   x'0000000000000008000000000000000a', 'me', 9, 1, 0, 0, 0, 0),"
		 "  (3, 'peer', 'models', 'm.pt', 1, 13,"
		 "   x'00000000000000090000000000000001', 'peer', 4, 0, 0, 0, 0, 1700000002);"
		 "INSERT INTO chunks VALUES"
		 "  (1, 0, x'00000000000000070000000000000000'),"
		 "  (1, 1, x'00000000000000070000000000000001'),"
		 "  (3, 0, x'00000000000000090000000000000000');");
	CHECK_EQ_INT(raw_int(path, "PRAGMA user_version"), 1);

	cap_reset();
	cat = open_ok("v1.db");
	CHECK_EQ_INT(catalog_schema_version(cat), CATALOG_SCHEMA_VERSION);
	CHECK(cap_has("migrated to version 2"));
	CHECK(cap_has("migrated to version 3"));
	CHECK(cap_has("migrated to version 4"));

	/* Everything version 1 held is still there. */
	CHECK_EQ_INT(catalog_get(cat, "me", "games", "g1.db", get_cb, &g), 0);
	CHECK(g.e.size == 5242880 && g.e.seq == 3 && g.e.dev == 2049 && g.e.ino == 77);
	CHECK(g.e.hash.hi == 7 && g.e.hash.lo == 5242880);
	CHECK_EQ_INT(g.e.confirmed_at, 1700000001);
	CHECK_EQ_INT(catalog_get_chunks(cat, "me", "games", "g1.db", &chunks, &n), 0);
	CHECK_EQ_INT(n, 2);
	CHECK(chunks && chunks[1].hi == 7 && chunks[1].lo == 1);
	free(chunks);
	CHECK_EQ_INT(catalog_changes(cat, "me", 0, walk_cb, &w), 0);
	CHECK_EQ_STR(w.text, "me:games/g1.db@3\nme:games/old.db@9-\n");
	memset(&w, 0, sizeof(w));
	CHECK_EQ_INT(catalog_foreach(cat, NULL, walk_cb, &w), 0);
	CHECK_EQ_STR(w.text, "me:games/g1.db@3\npeer:models/m.pt@4\n");
	CHECK_EQ_INT(catalog_meta_get(cat, "node", &v), 0);
	CHECK_EQ_STR(v, "train-1");
	free(v);
	CHECK_EQ_INT(catalog_max_seq(cat, "me", &seq), 0);
	CHECK_EQ_INT(seq, 9);
	CHECK_EQ_INT(catalog_max_seq(cat, "peer", &seq), 0);
	CHECK_EQ_INT(seq, 4);

	/* And the current version works on top of it. */
	CHECK_EQ_INT(publish(cat, "me", "games", "new.db", 1, 1, &seq), 0);
	CHECK_EQ_INT(seq, 10);
	CHECK_EQ_INT(catalog_set_pin(cat, "games", "g1.db", true), 0);
	CHECK_EQ_INT(catalog_get_pin(cat, "games", "g1.db", &pinned), 0);
	CHECK(pinned);
	catalog_close(cat);

	CHECK_EQ_INT(raw_int(path, "PRAGMA user_version"), CATALOG_SCHEMA_VERSION);
	CHECK_EQ_INT(raw_int(path, "SELECT count(*) FROM pragma_table_info('local') "
				   "WHERE name IN ('size', 'chunks')"),
		     2);
	CHECK_EQ_INT(raw_int(path, "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND "
				   "name IN ('local', 'queue')"),
		     2);
	raw_exec(path, "INSERT INTO queue (category, path, host, priority, created_at) "
		       "VALUES ('games', 'g1.db', 'peer', 3, 1700000000)");
	CHECK_EQ_INT(raw_int(path, "SELECT state = 'queued' AND attempts = 0 FROM queue"), 1);
	CHECK_EQ_INT(raw_int(path, "SELECT count(*) FROM pragma_foreign_key_check"), 0);
	CHECK_EQ_INT(raw_int(path, "SELECT count(*) FROM chunks"), 3 + 1); /* + new.db's */

	/* Opening again migrates nothing. */
	cap_reset();
	cat = open_ok("v1.db");
	CHECK_EQ_INT(catalog_schema_version(cat), CATALOG_SCHEMA_VERSION);
	catalog_close(cat);
	CHECK(strstr(cap_buf, "migrated") == NULL);
}

static void test_refuse_future_version(void)
{
	const char *path = db_path("future.db");
	struct catalog *cat = NULL;
	char sql[128];

	snprintf(sql, sizeof(sql),
		 "CREATE TABLE entries (x); PRAGMA application_id = 1836279910;"
		 "PRAGMA user_version = %d;",
		 CATALOG_SCHEMA_VERSION + 1);
	raw_exec(path, sql);
	cap_reset();
	CHECK_EQ_INT(catalog_open(path, &cat), -EPROTO);
	CHECK(cat == NULL);
	CHECK(cap_has("newer than this meshfs"));
	/* Left as it was for the build that understands it. */
	CHECK_EQ_INT(raw_int(path, "PRAGMA user_version"), CATALOG_SCHEMA_VERSION + 1);
	CHECK_EQ_INT(raw_int(path, "SELECT count(*) FROM sqlite_schema"), 1);
}

static void test_refuse_not_a_catalog(void)
{
	struct catalog *cat = NULL;
	char junk[8192];
	int fd;

	/* Not SQLite at all. */
	for (size_t i = 0; i < sizeof(junk); i++)
		junk[i] = "this is not a database\n"[i % 23];
	fd = open(db_path("garbage.db"), O_WRONLY | O_CREAT | O_TRUNC, 0644);
	CHECK(fd >= 0 && write_all(fd, junk, sizeof(junk)) == 0);
	close(fd);
	cap_reset();
	CHECK_EQ_INT(catalog_open(db_path("garbage.db"), &cat), -EPROTO);
	CHECK(cat == NULL);
	CHECK(cap_has("not a usable SQLite database"));

	/* SQLite, but somebody else's tables. */
	raw_exec(db_path("foreign.db"), "CREATE TABLE cookies (name TEXT, value TEXT);");
	cap_reset();
	CHECK_EQ_INT(catalog_open(db_path("foreign.db"), &cat), -EPROTO);
	CHECK(cap_has("no catalog version"));
	CHECK_EQ_INT(raw_int(db_path("foreign.db"), "SELECT count(*) FROM sqlite_schema"), 1);

	/* SQLite with another application's id. */
	raw_exec(db_path("otherapp.db"), "PRAGMA application_id = 42; PRAGMA user_version = 1;");
	cap_reset();
	CHECK_EQ_INT(catalog_open(db_path("otherapp.db"), &cat), -EPROTO);
	CHECK(cap_has("another application"));

	/* An empty file is an empty SQLite database: made into a catalog. */
	fd = open(db_path("zero.db"), O_WRONLY | O_CREAT | O_TRUNC, 0644);
	close(fd);
	CHECK_EQ_INT(catalog_open(db_path("zero.db"), &cat), 0);
	catalog_close(cat);
}

/* ---- concurrency ---- */

struct worker {
	struct catalog *cat;
	int id;
	int ret;
};

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	char path[32];

	for (int i = 0; i < 50 && w->ret == 0; i++) {
		snprintf(path, sizeof(path), "w%d/f%d", w->id, i);
		w->ret = publish(w->cat, "me", "games", path, (uint64_t)(i % 3) * MIB, i, NULL);
	}
	return NULL;
}

struct seqset {
	uint8_t seen[256];
	int count, dup;
};

static int seq_cb(void *arg, const struct cat_entry *e)
{
	struct seqset *s = arg;

	if (e->seq < 1 || e->seq >= 256 || s->seen[e->seq]++)
		s->dup++;
	s->count++;
	return 0;
}

/* Four threads on two connections to one file: every publish gets its own seq. */
static void test_concurrent_publishers(void)
{
	struct catalog *a = open_ok("threads.db"), *b = open_ok("threads.db");
	struct worker w[4];
	pthread_t t[4];
	struct seqset s = { 0 };
	int64_t max = 0;

	for (int i = 0; i < 4; i++) {
		w[i] = (struct worker){ .cat = i % 2 ? b : a, .id = i };
		CHECK_EQ_INT(pthread_create(&t[i], NULL, worker_main, &w[i]), 0);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(t[i], NULL);
		CHECK_EQ_INT(w[i].ret, 0);
	}
	CHECK_EQ_INT(catalog_max_seq(a, "me", &max), 0);
	CHECK_EQ_INT(max, 200);
	CHECK_EQ_INT(catalog_changes(b, "me", 0, seq_cb, &s), 0);
	CHECK_EQ_INT(s.count, 200);
	CHECK_EQ_INT(s.dup, 0);
	catalog_close(a);
	catalog_close(b);
}

/* ---- crash consistency ---- */

#define CRASH_FILES 48

/* The child: publishes and deletes forever; sizes and chunks tie together through the tag. */
static void crash_child(const char *path, unsigned seed, int ready_fd)
{
	struct catalog *cat = NULL;
	char name[32];

	if (catalog_open(path, &cat) != 0)
		_exit(3);
	srand(seed);
	for (long i = 0; i < 1000000; i++) {
		int k = rand() % CRASH_FILES, ret;
		const char *host = k % 5 ? "me" : "me2";

		snprintf(name, sizeof(name), "d%d/f%02d.bin", k % 4, k);
		if (rand() % 4 == 0) {
			ret = catalog_delete_local(cat, host, "games", name, NULL);
			if (ret != 0 && ret != -ENOENT)
				_exit(4);
		} else {
			uint64_t size = (uint64_t)(rand() % 4) * HASH_CHUNK_SIZE +
					(uint64_t)(rand() % 3) * 1000;
			uint64_t tag = ((uint64_t)rand() << 20) ^ (uint64_t)i;

			if (publish(cat, host, "games", name, size, tag, NULL))
				_exit(5);
		}
		if (i == 20 && ready_fd >= 0 && write(ready_fd, "r", 1) != 1)
			_exit(6);
	}
	_exit(0);
}

struct crash_check {
	int live, bad;
};

static int crash_entry_cb(void *arg, const struct cat_entry *e)
{
	struct crash_check *c = arg;

	c->live++;
	/* The child wrote hash = { tag, size }; its chunks are checked after the walk. */
	if (e->hash.lo != e->size || e->deleted)
		c->bad++;
	return 0;
}

struct live_key {
	char host[16], path[32];
	uint64_t size, tag;
};

struct live_list {
	struct live_key k[2 * CRASH_FILES];
	int n;
};

static int collect_cb(void *arg, const struct cat_entry *e)
{
	struct live_list *l = arg;

	if (l->n < (int)(sizeof(l->k) / sizeof(l->k[0]))) {
		snprintf(l->k[l->n].host, sizeof(l->k[l->n].host), "%s", e->host);
		snprintf(l->k[l->n].path, sizeof(l->k[l->n].path), "%s", e->path);
		l->k[l->n].size = e->size;
		l->k[l->n].tag = e->hash.hi;
		l->n++;
	}
	return 0;
}

static void crash_verify(const char *path, int64_t *prev_max)
{
	struct crash_check c = { 0 };
	struct live_list *l = calloc(1, sizeof(*l));
	struct catalog *cat = NULL;
	char *ic;
	int64_t max = 0;

	/* As the restarted daemon would: open (recovering the WAL), then look. Round 0 may have
	 * been killed before the file even existed. */
	CHECK_EQ_INT(catalog_open(path, &cat), 0);
	if (!cat || !l) {
		free(l);
		return;
	}
	CHECK_EQ_INT(catalog_schema_version(cat), CATALOG_SCHEMA_VERSION);
	ic = raw_text(path, "PRAGMA integrity_check");
	CHECK_EQ_STR(ic, "ok");
	free(ic);

	/* Every live entry: hash matches size, chunk count and chunk owners match. */
	CHECK_EQ_INT(catalog_foreach(cat, NULL, crash_entry_cb, &c), 0);
	CHECK_EQ_INT(c.bad, 0);
	CHECK_EQ_INT(catalog_foreach(cat, NULL, collect_cb, l), 0);
	CHECK_EQ_INT(l->n, c.live);
	for (int i = 0; i < l->n; i++) {
		struct hash128 *chunks = NULL;
		size_t n = 0;
		int ret = catalog_get_chunks(cat, l->k[i].host, "games", l->k[i].path, &chunks, &n);

		CHECK_EQ_INT(ret, 0);
		if (n != n_chunks_for(l->k[i].size)) {
			fprintf(stderr, "%s:%s size %llu has %zu chunks\n", l->k[i].host,
				l->k[i].path, (unsigned long long)l->k[i].size, n);
			CHECK(0);
		}
		for (size_t j = 0; chunks && j < n; j++)
			CHECK(chunks[j].hi == l->k[i].tag && chunks[j].lo == j);
		free(chunks);
	}

	/* Seqs: unique per host, never behind hosts.last_seq, never going backwards. */
	CHECK_EQ_INT(raw_int(path, "SELECT count(*) FROM (SELECT host, seq FROM entries "
				   "GROUP BY host, seq HAVING count(*) > 1)"),
		     0);
	CHECK_EQ_INT(raw_int(path, "SELECT count(*) FROM (SELECT host, max(seq) m FROM entries "
				   "GROUP BY host) x LEFT JOIN hosts h ON h.name = x.host "
				   "WHERE h.last_seq IS NULL OR h.last_seq < x.m"),
		     0);
	CHECK_EQ_INT(raw_int(path, "SELECT count(*) FROM chunks c JOIN entries e "
				   "ON e.id = c.entry_id WHERE e.deleted"),
		     0);
	CHECK_EQ_INT(raw_int(path, "SELECT count(*) FROM chunks c LEFT JOIN entries e "
				   "ON e.id = c.entry_id WHERE e.id IS NULL"),
		     0);
	CHECK_EQ_INT(catalog_max_seq(cat, "me", &max), 0);
	CHECK(max >= *prev_max);
	*prev_max = max;
	catalog_close(cat);
	free(l);
}

static void test_crash_consistency(void)
{
	const char *path = db_path("crash.db");
	unsigned seed = (unsigned)time(NULL) ^ (unsigned)getpid();
	int64_t prev_max = 0;

	printf("# crash test seed %u\n", seed);
	srand(seed);
	for (int round = 0; round < 10; round++) {
		int fds[2], status = 0;
		pid_t pid;
		char c;

		CHECK_EQ_INT(pipe(fds), 0);
		pid = fork();
		CHECK(pid >= 0);
		if (pid < 0)
			return;
		if (pid == 0) {
			close(fds[0]);
			/* Round 0 never reads the pipe: a write to it must not kill the child
			 * with SIGPIPE before the parent's SIGKILL does. */
			signal(SIGPIPE, SIG_IGN);
			crash_child(path, seed + (unsigned)round, fds[1]);
		}
		close(fds[1]);
		/* Round 0 may kill it while it creates and migrates the catalog. */
		if (round > 0 && read(fds[0], &c, 1) != 1)
			fprintf(stderr, "round %d: child died before it was ready\n", round);
		close(fds[0]);
		usleep((useconds_t)(rand() % (round ? 60000 : 3000)));
		CHECK_EQ_INT(kill(pid, SIGKILL), 0);
		CHECK_EQ_INT(waitpid(pid, &status, 0), pid);
		CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
		crash_verify(path, &prev_max);
	}
	CHECK(prev_max > 20);
}

/* ---- setup ---- */

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(p);
}

/* Runs before main (TEST_MAIN owns main): one scratch directory and the log capture. */
__attribute__((constructor)) static void setup(void)
{
	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		exit(2);
	}
	log_set_sink(capture_sink, NULL);
	log_set_level(LOG_DEBUG);
}

__attribute__((destructor)) static void teardown(void)
{
	nftw(tmpdir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

TEST_MAIN(TEST(test_open_create), TEST(test_open_memory), TEST(test_open_bad_args),
	  TEST(test_open_unwritable), TEST(test_publish_get), TEST(test_publish_invalid),
	  TEST(test_seq_monotonic), TEST(test_foreach_changes), TEST(test_callback_reentry),
	  TEST(test_confirm), TEST(test_totals), TEST(test_publish_batch_and_totals),
	  TEST(test_pins), TEST(test_meta), TEST(test_blocks),
	  TEST(test_migrate_v1_to_v2), TEST(test_refuse_future_version),
	  TEST(test_refuse_not_a_catalog), TEST(test_concurrent_publishers),
	  TEST(test_crash_consistency))
