/*
 * test_cache — the cache on a real catalog in a temp state dir: chunk writes and the present
 * bitmap, whole-file verification, persistence across a restart (orphans and lost files),
 * re-verification after an unclean stop, reservations and LRU eviction (pins, open handles,
 * partial copies, -ENOSPC), cache_evict, cache_check on a copy corrupted on disk, and version
 * changes at one path.
 */
#include "sync/cache.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sync/catalog.h"
#include "sync/log.h"
#include "sync/util.h"
#include "tests/unit/testutil.h"

#define CHUNK ((size_t)HASH_CHUNK_SIZE)
#define SMALL ((uint64_t)100000) /* one short chunk */

/* ---- fixture ---- */

struct env {
	char dir[256];
	char *db;
	struct mfs_config cfg;
	struct catalog *cat;
	struct cache *c;
};

static uint8_t data[3 * CHUNK]; /* pseudo-random bytes, filled before main */

__attribute__((constructor)) static void data_init(void)
{
	uint64_t x = 0x9e3779b97f4a7c15ull;

	for (size_t i = 0; i < 3 * CHUNK; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		data[i] = (uint8_t)x;
	}
}

static char cap_buf[16384];

static void cap_sink(int level, const char *line, void *arg)
{
	size_t used = strlen(cap_buf);

	snprintf(cap_buf + used, sizeof(cap_buf) - used, "%s\n", line);
}

static void cap_reset(void)
{
	cap_buf[0] = '\0';
}

static bool cap_has(const char *s)
{
	return strstr(cap_buf, s) != NULL;
}

static bool env_open_cache(struct env *e)
{
	int ret;

	ret = catalog_open(e->db, &e->cat);
	CHECK_EQ_INT(ret, 0);
	if (ret)
		return false;
	ret = cache_open(&e->cfg, e->cat, &e->c);
	CHECK_EQ_INT(ret, 0);
	if (ret) {
		catalog_close(e->cat);
		e->cat = NULL;
	}
	return ret == 0;
}

static void env_close_cache(struct env *e)
{
	cache_close(e->c);
	catalog_close(e->cat);
	e->c = NULL;
	e->cat = NULL;
}

static bool env_init(struct env *e, uint64_t max_size)
{
	const char *tmp = getenv("TMPDIR");

	memset(e, 0, sizeof(*e));
	snprintf(e->dir, sizeof(e->dir), "%s/meshfs-test-cache-XXXXXX", tmp ? tmp : "/tmp");
	if (!mkdtemp(e->dir)) {
		CHECK(!"temp dir");
		return false;
	}
	e->cfg.state_dir = e->dir;
	e->cfg.cache_max_size = max_size;
	e->db = path_join(e->dir, "catalog.db");
	log_set_sink(cap_sink, NULL);
	cap_reset();
	return env_open_cache(e);
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

static void env_fini(struct env *e)
{
	env_close_cache(e);
	nftw(e->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	free(e->db);
	log_set_sink(NULL, NULL);
}

/* <state_dir>/cache/<hex of @h> into @out. */
static void cache_path(const struct env *e, const struct hash128 *h, char *out, size_t len)
{
	char s[HASH_STR_LEN];

	hash_format(h, s);
	snprintf(out, len, "%s/cache/%s", e->dir, s + 9);
}

static bool exists(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0;
}

static void flip_byte(const char *path, uint64_t off)
{
	int fd = open(path, O_RDWR);
	uint8_t b = 0;

	CHECK(fd >= 0);
	if (fd < 0)
		return;
	CHECK_EQ_INT(pread(fd, &b, 1, (off_t)off), 1);
	b ^= 0x5a;
	CHECK_EQ_INT(pwrite(fd, &b, 1, (off_t)off), 1);
	close(fd);
}

static size_t nchunks_of(uint64_t size)
{
	return (size_t)((size + CHUNK - 1) / CHUNK);
}

static uint64_t len_of(uint64_t size, size_t i)
{
	uint64_t left = size - (uint64_t)i * CHUNK;

	return left < CHUNK ? left : CHUNK;
}

/*
 * Caches @size bytes at @buf as version hash_buf(buf) of (category, path): chunk list, a
 * reservation and the chunks whose bit is set in @mask, then finish when all are there.
 * Returns the open handle (NULL on a failed check).
 */
static struct cache_file *make(struct cache *c, const char *category, const char *path,
			       const uint8_t *buf, uint64_t size, unsigned mask)
{
	struct hash128 whole = hash_buf(buf, size), chunks[4];
	size_t n = nchunks_of(size);
	struct cache_file *f = NULL;
	bool all = true;
	int ret;

	for (size_t i = 0; i < n; i++)
		chunks[i] = hash_buf(buf + i * CHUNK, len_of(size, i));
	ret = cache_file_get(c, category, path, &whole, size, &f);
	CHECK_EQ_INT(ret, 0);
	if (ret)
		return NULL;
	CHECK_EQ_INT(cache_file_set_chunks(f, chunks, n), 0);
	for (size_t i = 0; i < n; i++) {
		if (!(mask & (1u << i))) {
			all = false;
			continue;
		}
		CHECK_EQ_INT(cache_reserve(c, len_of(size, i)), 0);
		CHECK_EQ_INT(cache_file_write_chunk(f, i, buf + i * CHUNK, len_of(size, i)), 0);
	}
	if (all)
		CHECK_EQ_INT(cache_file_finish(f), 0);
	return f;
}

static enum cache_state state_of(struct cache *c, const char *category, const char *path)
{
	struct cache_info info;

	CHECK_EQ_INT(cache_lookup(c, category, path, &info), 0);
	return info.state;
}

static uint64_t used_of(struct cache *c)
{
	uint64_t used = 0, max = 0;

	cache_usage(c, &used, &max);
	return used;
}

/* ---- tests ---- */

static void test_write_and_finish(void)
{
	uint64_t size = 2 * CHUNK + 12345;
	struct hash128 whole = hash_buf(data, size), chunks[3], h;
	struct cache_file *f = NULL, *again = NULL;
	struct cache_info info;
	struct env e;
	struct stat st;
	char path[512];
	uint8_t *back;

	if (!env_init(&e, 0))
		return;
	for (size_t i = 0; i < 3; i++)
		chunks[i] = hash_buf(data + i * CHUNK, len_of(size, i));
	CHECK_EQ_INT(cache_file_get(e.c, "models", "m/a.pt", &whole, size, &f), 0);
	if (!f)
		goto out;
	CHECK_EQ_INT(cache_file_nchunks(f), 3);
	CHECK_EQ_INT(cache_file_size(f), size);
	CHECK(hash_equal(cache_file_hash(f), &whole));

	/* A sparse 0600 file of the version's size, named by its hash. */
	cache_path(&e, &whole, path, sizeof(path));
	CHECK_EQ_INT(stat(path, &st), 0);
	CHECK_EQ_INT(st.st_mode & 0777, 0600);
	CHECK_EQ_INT(st.st_size, size);
	CHECK((uint64_t)st.st_blocks * 512 < CHUNK);

	CHECK_EQ_INT(cache_file_chunk_hash(f, 0, &h), -ENOENT);
	CHECK_EQ_INT(cache_file_set_chunks(f, chunks, 2), -EINVAL);
	CHECK_EQ_INT(cache_file_set_chunks(f, chunks, 3), 0);
	CHECK_EQ_INT(cache_file_chunk_hash(f, 2, &h), 0);
	CHECK(hash_equal(&h, &chunks[2]));
	CHECK_EQ_INT(cache_file_chunk_hash(f, 3, &h), -EINVAL);
	CHECK(!cache_file_range_present(f, 0, 1));
	CHECK_EQ_INT(state_of(e.c, "models", "m/a.pt"), CACHE_NONE);

	CHECK_EQ_INT(cache_reserve(e.c, size), 0);
	CHECK_EQ_INT(cache_file_write_chunk(f, 0, data, CHUNK - 1), -EINVAL);
	CHECK_EQ_INT(cache_file_write_chunk(f, 2, data + 2 * CHUNK, CHUNK), -EINVAL);
	CHECK_EQ_INT(cache_file_write_chunk(f, 3, data, CHUNK), -EINVAL);
	CHECK_EQ_INT(cache_file_write_chunk(f, 0, data, CHUNK), 0);
	CHECK(cache_file_chunk_present(f, 0));
	CHECK(!cache_file_chunk_present(f, 1));
	CHECK(cache_file_range_present(f, 0, CHUNK));
	CHECK(cache_file_range_present(f, 100, 200));
	CHECK(!cache_file_range_present(f, CHUNK - 1, 2));
	CHECK(cache_file_range_present(f, size, 10)); /* past the end: nothing to need */
	CHECK_EQ_INT(cache_file_cached_bytes(f), CHUNK);
	CHECK_EQ_INT(cache_lookup(e.c, "models", "m/a.pt", &info), 0);
	CHECK_EQ_INT(info.state, CACHE_PARTIAL);
	CHECK_EQ_INT(info.cached_bytes, CHUNK);
	CHECK_EQ_INT(info.synced_at, 0);
	CHECK_EQ_INT(cache_file_finish(f), -EAGAIN);
	CHECK(!cache_file_complete(f));

	CHECK_EQ_INT(cache_file_write_chunk(f, 2, data + 2 * CHUNK, 12345), 0);
	CHECK_EQ_INT(cache_file_write_chunk(f, 1, data + CHUNK, CHUNK), 0);
	CHECK(cache_file_range_present(f, 0, size));
	CHECK_EQ_INT(cache_file_finish(f), 0);
	CHECK(cache_file_complete(f));
	CHECK_EQ_INT(cache_file_finish(f), 0); /* again: nothing to do */
	CHECK_EQ_INT(cache_file_cached_bytes(f), size);
	CHECK_EQ_INT(cache_lookup(e.c, "models", "m/a.pt", &info), 0);
	CHECK_EQ_INT(info.state, CACHE_COMPLETE);
	CHECK(hash_equal(&info.hash, &whole));
	CHECK_EQ_INT(info.size, size);
	CHECK_EQ_INT(info.cached_bytes, size);
	CHECK(info.synced_at > now_s() - 60 && info.synced_at <= now_s());
	CHECK_EQ_STR(info.last_error, "");
	CHECK(!info.pinned);
	CHECK_EQ_INT(used_of(e.c), size);

	back = malloc(size);
	CHECK(back && pread(cache_file_fd(f), back, size, 0) == (ssize_t)size);
	CHECK(back && memcmp(back, data, size) == 0);
	free(back);

	/* The same version again is the same handle. */
	CHECK_EQ_INT(cache_file_get(e.c, "models", "m/a.pt", &whole, size, &again), 0);
	CHECK(again == f);
	cache_file_put(again);
	/* The same content under another size is refused. */
	CHECK_EQ_INT(cache_file_get(e.c, "models", "m/b.pt", &whole, size + 1, &again), -EINVAL);
	CHECK_EQ_INT(cache_file_get(e.c, "models", "../x", &whole, size, &again), -EINVAL);
	cache_file_put(f);
	CHECK_EQ_INT(state_of(e.c, "models", "m/a.pt"), CACHE_COMPLETE);
out:
	env_fini(&e);
}

static void test_empty_version(void)
{
	struct hash128 whole = hash_buf("", 0);
	struct cache_file *f = NULL;
	struct env e;

	if (!env_init(&e, 0))
		return;
	CHECK_EQ_INT(cache_file_get(e.c, "games", "empty.db", &whole, 0, &f), 0);
	if (f) {
		CHECK_EQ_INT(cache_file_nchunks(f), 0);
		CHECK(cache_file_range_present(f, 0, 100));
		CHECK_EQ_INT(cache_file_set_chunks(f, NULL, 0), 0);
		CHECK_EQ_INT(cache_file_finish(f), 0);
		CHECK(cache_file_complete(f));
		cache_file_put(f);
	}
	CHECK_EQ_INT(state_of(e.c, "games", "empty.db"), CACHE_COMPLETE);
	env_fini(&e);
}

static void test_wrong_whole_hash(void)
{
	uint64_t size = CHUNK + 10;
	struct hash128 wrong = hash_buf("something else", 14), chunks[2];
	struct cache_file *f = NULL;
	struct cache_info info;
	struct env e;

	if (!env_init(&e, 0))
		return;
	chunks[0] = hash_buf(data, CHUNK);
	chunks[1] = hash_buf(data + CHUNK, 10);
	CHECK_EQ_INT(cache_file_get(e.c, "games", "g.db", &wrong, size, &f), 0);
	if (!f)
		goto out;
	CHECK_EQ_INT(cache_file_set_chunks(f, chunks, 2), 0);
	CHECK_EQ_INT(cache_file_write_chunk(f, 0, data, CHUNK), 0);
	CHECK_EQ_INT(cache_file_write_chunk(f, 1, data + CHUNK, 10), 0);
	CHECK_EQ_INT(used_of(e.c), size);
	CHECK_EQ_INT(cache_file_finish(f), -EBADMSG);
	CHECK(!cache_file_complete(f));
	CHECK(!cache_file_chunk_present(f, 0));
	CHECK(!cache_file_chunk_present(f, 1));
	CHECK_EQ_INT(cache_file_cached_bytes(f), 0);
	CHECK_EQ_INT(used_of(e.c), 0);
	CHECK_EQ_INT(cache_file_finish(f), -EAGAIN);
	CHECK_EQ_INT(cache_lookup(e.c, "games", "g.db", &info), 0);
	CHECK_EQ_INT(info.state, CACHE_NONE);
	CHECK(strstr(info.last_error, "failed verification") != NULL);
	cache_file_put(f);

	/* The error survives a restart; "" clears it. */
	env_close_cache(&e);
	if (!env_open_cache(&e))
		goto out;
	CHECK_EQ_INT(cache_lookup(e.c, "games", "g.db", &info), 0);
	CHECK(strstr(info.last_error, "failed verification") != NULL);
	cache_set_error(e.c, "games", "g.db", "");
	CHECK_EQ_INT(cache_lookup(e.c, "games", "g.db", &info), 0);
	CHECK_EQ_STR(info.last_error, "");
	cache_set_error(e.c, "games", "never-cached.db", "connection refused by peer");
	CHECK_EQ_INT(cache_lookup(e.c, "games", "never-cached.db", &info), 0);
	CHECK_EQ_INT(info.state, CACHE_NONE);
	CHECK_EQ_STR(info.last_error, "connection refused by peer");
	env_close_cache(&e);
	if (!env_open_cache(&e))
		goto out;
	CHECK_EQ_INT(cache_lookup(e.c, "games", "never-cached.db", &info), 0);
	CHECK_EQ_STR(info.last_error, "connection refused by peer");
	CHECK_EQ_INT(cache_lookup(e.c, "games", "g.db", &info), 0);
	CHECK_EQ_STR(info.last_error, "");
out:
	env_fini(&e);
}

static void test_persistence(void)
{
	uint64_t psize = 2 * CHUNK + 777;
	struct hash128 pw = hash_buf(data, psize), bw = hash_buf(data + 1, SMALL),
		       gw = hash_buf(data + 2, SMALL), h;
	struct cache_file *f;
	struct cache_info info;
	char orphan[512], junk[512], gone[512], bpath[512];
	int64_t b_synced;
	struct env e;
	int fd;

	if (!env_init(&e, 0))
		return;
	f = make(e.c, "games", "p.db", data, psize, 1u << 0 | 1u << 2); /* partial */
	cache_file_put(f);
	f = make(e.c, "models", "b.pt", data + 1, SMALL, 1);
	cache_file_put(f);
	f = make(e.c, "models", "gone.pt", data + 2, SMALL, 1);
	cache_file_put(f);
	CHECK_EQ_INT(cache_set_pin(e.c, "models", "b.pt", true), 0);
	CHECK_EQ_INT(cache_lookup(e.c, "models", "b.pt", &info), 0);
	b_synced = info.synced_at;
	CHECK(b_synced > 0);
	CHECK_EQ_INT(used_of(e.c), CHUNK + 777 + 2 * SMALL);
	env_close_cache(&e);

	/* While stopped: a file nothing records appears (a crash between write and record),
	 * and a recorded one disappears. */
	snprintf(orphan, sizeof(orphan), "%s/cache/0123456789abcdef0123456789abcdef", e.dir);
	snprintf(junk, sizeof(junk), "%s/cache/junk.tmp", e.dir);
	fd = open(orphan, O_CREAT | O_WRONLY, 0600);
	CHECK(fd >= 0 && close(fd) == 0);
	fd = open(junk, O_CREAT | O_WRONLY, 0600);
	CHECK(fd >= 0 && close(fd) == 0);
	cache_path(&e, &gw, gone, sizeof(gone));
	CHECK_EQ_INT(unlink(gone), 0);

	cap_reset();
	if (!env_open_cache(&e))
		goto out;
	CHECK(!exists(orphan));
	CHECK(!exists(junk));
	CHECK(cap_has("0123456789abcdef0123456789abcdef"));
	CHECK(cap_has("gone.pt"));
	CHECK_EQ_INT(state_of(e.c, "models", "gone.pt"), CACHE_NONE);
	cache_path(&e, &bw, bpath, sizeof(bpath));
	CHECK(exists(bpath));

	/* The partial bitmap and chunk list survived. */
	CHECK_EQ_INT(cache_lookup(e.c, "games", "p.db", &info), 0);
	CHECK_EQ_INT(info.state, CACHE_PARTIAL);
	CHECK_EQ_INT(info.cached_bytes, CHUNK + 777);
	CHECK(hash_equal(&info.hash, &pw));
	CHECK_EQ_INT(cache_lookup(e.c, "models", "b.pt", &info), 0);
	CHECK_EQ_INT(info.state, CACHE_COMPLETE);
	CHECK_EQ_INT(info.synced_at, b_synced);
	CHECK(info.pinned);
	CHECK_EQ_INT(used_of(e.c), CHUNK + 777 + SMALL);

	f = NULL;
	CHECK_EQ_INT(cache_file_get(e.c, "games", "p.db", &pw, psize, &f), 0);
	if (f) {
		CHECK(cache_file_chunk_present(f, 0));
		CHECK(!cache_file_chunk_present(f, 1));
		CHECK(cache_file_chunk_present(f, 2));
		CHECK_EQ_INT(cache_file_chunk_hash(f, 1, &h), 0);
		CHECK(hash_equal(&h, &(struct hash128){ hash_buf(data + CHUNK, CHUNK).hi,
							 hash_buf(data + CHUNK, CHUNK).lo }));
		/* ... and the copy can be completed where it stopped. */
		CHECK_EQ_INT(cache_file_finish(f), -EAGAIN);
		CHECK_EQ_INT(cache_file_write_chunk(f, 1, data + CHUNK, CHUNK), 0);
		CHECK_EQ_INT(cache_file_finish(f), 0);
		cache_file_put(f);
	}
	CHECK_EQ_INT(state_of(e.c, "games", "p.db"), CACHE_COMPLETE);
out:
	env_fini(&e);
}

/* After a stop that was not clean, in another boot, partial chunks are re-read at start. */
static void test_unclean_restart(void)
{
	uint64_t size = 2 * CHUNK + 5;
	struct hash128 whole = hash_buf(data, size);
	struct cache_file *f;
	char path[512];
	struct env e;

	if (!env_init(&e, 0))
		return;
	cache_path(&e, &whole, path, sizeof(path));
	f = make(e.c, "games", "u.db", data, size, 1u << 0 | 1u << 1);
	cache_file_put(f);
	env_close_cache(&e);

	/* A clean stop: the bits are trusted as they are, nothing is re-read. */
	flip_byte(path, 7);
	if (!env_open_cache(&e))
		goto out;
	CHECK_EQ_INT(cache_lookup(e.c, "games", "u.db", &(struct cache_info){ 0 }), 0);
	f = NULL;
	CHECK_EQ_INT(cache_file_get(e.c, "games", "u.db", &whole, size, &f), 0);
	CHECK(f && cache_file_chunk_present(f, 0));
	cache_file_put(f);
	flip_byte(path, 7); /* repaired */

	/* Now as after a power cut: the session marker names another boot. */
	env_close_cache(&e);
	CHECK_EQ_INT(catalog_open(e.db, &e.cat), 0);
	CHECK_EQ_INT(catalog_meta_set(e.cat, "cache_session", "some-other-boot"), 0);
	catalog_close(e.cat);
	e.cat = NULL;
	flip_byte(path, CHUNK + 3); /* chunk 1 torn */

	cap_reset();
	if (!env_open_cache(&e))
		goto out;
	CHECK(cap_has("unclean shutdown"));
	f = NULL;
	CHECK_EQ_INT(cache_file_get(e.c, "games", "u.db", &whole, size, &f), 0);
	if (f) {
		CHECK(cache_file_chunk_present(f, 0));
		CHECK(!cache_file_chunk_present(f, 1));
		CHECK_EQ_INT(cache_file_cached_bytes(f), CHUNK);
		cache_file_put(f);
	}
	CHECK_EQ_INT(used_of(e.c), CHUNK);
out:
	env_fini(&e);
}

static void test_lru_eviction(void)
{
	const uint8_t *a = data, *b = data + 1, *cc = data + 2, *d = data + 3, *p = data + 4;
	struct hash128 bw = hash_buf(b, SMALL);
	struct cache_file *f, *open_d;
	char bpath[512];
	struct env e;

	if (!env_init(&e, 4 * SMALL))
		return;
	cache_path(&e, &bw, bpath, sizeof(bpath));
	cache_file_put(make(e.c, "models", "a.pt", a, SMALL, 1));
	cache_file_put(make(e.c, "models", "b.pt", b, SMALL, 1));
	cache_file_put(make(e.c, "models", "c.pt", cc, SMALL, 1));
	cache_file_put(make(e.c, "models", "d.pt", d, SMALL, 1));
	CHECK_EQ_INT(used_of(e.c), 4 * SMALL);

	/* Using a makes b the least recently used. */
	f = make(e.c, "models", "a.pt", a, SMALL, 0);
	cache_file_touch(f);
	cache_file_put(f);
	CHECK_EQ_INT(cache_reserve(e.c, SMALL), 0);
	CHECK_EQ_INT(state_of(e.c, "models", "b.pt"), CACHE_NONE);
	CHECK(!exists(bpath));
	CHECK_EQ_INT(state_of(e.c, "models", "a.pt"), CACHE_COMPLETE);
	CHECK_EQ_INT(state_of(e.c, "models", "c.pt"), CACHE_COMPLETE);
	CHECK_EQ_INT(state_of(e.c, "models", "d.pt"), CACHE_COMPLETE);
	CHECK_EQ_INT(used_of(e.c), 3 * SMALL);
	cache_release(e.c, SMALL);

	/* c pinned, d open, and a partial copy nobody is fetching (1 of 2 chunks). */
	CHECK_EQ_INT(cache_set_pin(e.c, "models", "c.pt", true), 0);
	open_d = make(e.c, "models", "d.pt", d, SMALL, 0);
	f = make(e.c, "games", "partial.db", p, CHUNK + SMALL, 1u << 1);
	cache_file_put(f);
	CHECK_EQ_INT(state_of(e.c, "games", "partial.db"), CACHE_PARTIAL);
	CHECK_EQ_INT(used_of(e.c), 4 * SMALL);

	/* Complete copies go first: a, although the partial one is more recent. */
	CHECK_EQ_INT(cache_reserve(e.c, SMALL), 0);
	CHECK_EQ_INT(state_of(e.c, "models", "a.pt"), CACHE_NONE);
	CHECK_EQ_INT(state_of(e.c, "games", "partial.db"), CACHE_PARTIAL);
	cache_release(e.c, SMALL);
	CHECK_EQ_INT(used_of(e.c), 3 * SMALL);
	/* Then the partial one, as no complete copy may go. */
	CHECK_EQ_INT(cache_reserve(e.c, 2 * SMALL), 0);
	CHECK_EQ_INT(state_of(e.c, "games", "partial.db"), CACHE_NONE);
	CHECK_EQ_INT(state_of(e.c, "models", "c.pt"), CACHE_COMPLETE);
	CHECK_EQ_INT(state_of(e.c, "models", "d.pt"), CACHE_COMPLETE);
	cache_release(e.c, 2 * SMALL);
	CHECK_EQ_INT(used_of(e.c), 2 * SMALL);

	/* Impossible: nothing evictable is left, and nothing is evicted trying. */
	CHECK_EQ_INT(cache_reserve(e.c, 3 * SMALL), -ENOSPC);
	CHECK_EQ_INT(cache_reserve(e.c, 5 * SMALL), -ENOSPC);
	CHECK_EQ_INT(state_of(e.c, "models", "c.pt"), CACHE_COMPLETE);
	CHECK_EQ_INT(state_of(e.c, "models", "d.pt"), CACHE_COMPLETE);
	CHECK_EQ_INT(cache_reserve(e.c, 2 * SMALL), 0); /* what is free still is */
	cache_release(e.c, 2 * SMALL);

	/* Closed, d can go; pinned c stays. */
	cache_file_put(open_d);
	CHECK_EQ_INT(cache_reserve(e.c, 3 * SMALL), 0);
	CHECK_EQ_INT(state_of(e.c, "models", "d.pt"), CACHE_NONE);
	CHECK_EQ_INT(state_of(e.c, "models", "c.pt"), CACHE_COMPLETE);
	cache_release(e.c, 3 * SMALL);
	/* Unpinned, so can c. */
	CHECK_EQ_INT(cache_set_pin(e.c, "models", "c.pt", false), 0);
	CHECK_EQ_INT(cache_reserve(e.c, 4 * SMALL), 0);
	CHECK_EQ_INT(state_of(e.c, "models", "c.pt"), CACHE_NONE);
	CHECK_EQ_INT(used_of(e.c), 0);
	cache_release(e.c, 4 * SMALL);

	/* Evictions are recorded: a restart brings none of them back. */
	env_close_cache(&e);
	if (!env_open_cache(&e))
		goto out;
	CHECK_EQ_INT(state_of(e.c, "models", "a.pt"), CACHE_NONE);
	CHECK_EQ_INT(state_of(e.c, "models", "d.pt"), CACHE_NONE);
	CHECK_EQ_INT(used_of(e.c), 0);
out:
	env_fini(&e);
}

/* A pin on a directory (or a whole category) covers what is below it. */
static void test_pin_directory(void)
{
	struct cache_info info;
	struct env e;

	if (!env_init(&e, 2 * SMALL))
		return;
	cache_file_put(make(e.c, "games", "sub/x.db", data, SMALL, 1));
	cache_file_put(make(e.c, "games", "y.db", data + 1, SMALL, 1));
	CHECK_EQ_INT(cache_set_pin(e.c, "games", "sub", true), 0);
	CHECK_EQ_INT(cache_lookup(e.c, "games", "sub/x.db", &info), 0);
	CHECK(info.pinned);
	CHECK_EQ_INT(cache_reserve(e.c, SMALL), 0);
	CHECK_EQ_INT(state_of(e.c, "games", "sub/x.db"), CACHE_COMPLETE);
	CHECK_EQ_INT(state_of(e.c, "games", "y.db"), CACHE_NONE);
	cache_release(e.c, SMALL);
	CHECK_EQ_INT(cache_reserve(e.c, 2 * SMALL), -ENOSPC);
	CHECK_EQ_INT(cache_set_pin(e.c, "games", "sub", false), 0);
	CHECK_EQ_INT(cache_set_pin(e.c, "games", "", true), 0);
	CHECK_EQ_INT(cache_reserve(e.c, 2 * SMALL), -ENOSPC);
	CHECK_EQ_INT(cache_set_pin(e.c, "games", "", false), 0);
	CHECK_EQ_INT(cache_reserve(e.c, 2 * SMALL), 0);
	CHECK_EQ_INT(state_of(e.c, "games", "sub/x.db"), CACHE_NONE);
	CHECK_EQ_INT(cache_set_pin(e.c, "games", "../x", true), -EINVAL);
	env_fini(&e);
}

static void test_min_free(void)
{
	struct env e;

	if (!env_init(&e, 0))
		return;
	cache_file_put(make(e.c, "models", "a.pt", data, SMALL, 1));
	env_close_cache(&e);

	/* 100% free can never be had: refused, and nothing evicted for it. */
	e.cfg.cache_min_free_pct = 100;
	if (!env_open_cache(&e))
		goto out;
	CHECK_EQ_INT(cache_reserve(e.c, 1), -ENOSPC);
	CHECK_EQ_INT(state_of(e.c, "models", "a.pt"), CACHE_COMPLETE);
	env_close_cache(&e);

	e.cfg.cache_min_free_pct = 0;
	e.cfg.cache_min_free_bytes = 4096;
	if (!env_open_cache(&e))
		goto out;
	CHECK_EQ_INT(cache_reserve(e.c, SMALL), 0);
	cache_release(e.c, SMALL);
	CHECK_EQ_INT(cache_reserve(e.c, UINT64_MAX / 2), -ENOSPC);
	CHECK_EQ_INT(state_of(e.c, "models", "a.pt"), CACHE_COMPLETE);
out:
	env_fini(&e);
}

static void test_evict(void)
{
	struct hash128 w = hash_buf(data, SMALL);
	struct cache_file *f;
	struct cache_info info;
	char path[512];
	struct env e;

	if (!env_init(&e, 0))
		return;
	cache_path(&e, &w, path, sizeof(path));
	f = make(e.c, "models", "a.pt", data, SMALL, 1);
	CHECK_EQ_INT(cache_evict(e.c, "models", "a.pt"), -EBUSY);
	CHECK(exists(path));
	cache_file_put(f);
	CHECK_EQ_INT(cache_evict(e.c, "models", "a.pt"), 0);
	CHECK(!exists(path));
	CHECK_EQ_INT(state_of(e.c, "models", "a.pt"), CACHE_NONE);
	CHECK_EQ_INT(used_of(e.c), 0);
	CHECK_EQ_INT(cache_evict(e.c, "models", "a.pt"), -ENOENT);
	CHECK_EQ_INT(cache_evict(e.c, "models", "never.pt"), -ENOENT);

	/* A pinned copy can still be dropped on request; the pin stays. */
	cache_file_put(make(e.c, "models", "a.pt", data, SMALL, 1));
	CHECK_EQ_INT(cache_set_pin(e.c, "models", "a.pt", true), 0);
	CHECK_EQ_INT(cache_evict(e.c, "models", "a.pt"), 0);
	CHECK_EQ_INT(cache_lookup(e.c, "models", "a.pt", &info), 0);
	CHECK_EQ_INT(info.state, CACHE_NONE);
	CHECK(info.pinned);

	/* The same content at two paths is one file; dropping one path keeps the other. */
	cache_file_put(make(e.c, "models", "one.pt", data, SMALL, 1));
	cache_file_put(make(e.c, "models", "two.pt", data, SMALL, 0));
	CHECK_EQ_INT(state_of(e.c, "models", "two.pt"), CACHE_COMPLETE);
	CHECK_EQ_INT(used_of(e.c), SMALL);
	CHECK_EQ_INT(cache_evict(e.c, "models", "one.pt"), 0);
	CHECK(exists(path));
	CHECK_EQ_INT(state_of(e.c, "models", "one.pt"), CACHE_NONE);
	CHECK_EQ_INT(state_of(e.c, "models", "two.pt"), CACHE_COMPLETE);
	env_close_cache(&e);
	if (!env_open_cache(&e))
		goto out;
	CHECK_EQ_INT(state_of(e.c, "models", "two.pt"), CACHE_COMPLETE);
	CHECK_EQ_INT(state_of(e.c, "models", "one.pt"), CACHE_NONE);
	CHECK_EQ_INT(cache_evict(e.c, "models", "two.pt"), 0);
	CHECK(!exists(path));
out:
	env_fini(&e);
}

struct reports {
	char text[4096];
	int n;
};

static void report_cb(void *arg, const char *category, const char *path, const char *what)
{
	struct reports *r = arg;
	size_t used = strlen(r->text);

	snprintf(r->text + used, sizeof(r->text) - used, "%s/%s: %s\n", category, path, what);
	r->n++;
}

static void test_check(void)
{
	uint64_t size = 2 * CHUNK + 100;
	struct hash128 aw = hash_buf(data, size), pw = hash_buf(data + 8, size);
	struct cache_file *f;
	struct reports r = { "", 0 };
	char apath[512], ppath[512];
	struct env e;

	if (!env_init(&e, 0))
		return;
	cache_path(&e, &aw, apath, sizeof(apath));
	cache_path(&e, &pw, ppath, sizeof(ppath));
	cache_file_put(make(e.c, "models", "a.pt", data, size, 7));
	cache_file_put(make(e.c, "games", "p.db", data + 8, size, 1u << 0 | 1u << 1));
	CHECK_EQ_INT(cache_check(e.c, report_cb, &r), 2);
	CHECK_EQ_INT(r.n, 0);

	flip_byte(apath, CHUNK + 5);	/* chunk 1 of the complete copy */
	flip_byte(ppath, 10);		/* chunk 0 of the partial one */
	CHECK_EQ_INT(cache_check(e.c, report_cb, &r), 2);
	CHECK_EQ_INT(r.n, 2);
	CHECK(strstr(r.text, "models/a.pt: chunk 1: hash mismatch") != NULL);
	CHECK(strstr(r.text, "games/p.db: chunk 0: hash mismatch") != NULL);
	CHECK_EQ_INT(state_of(e.c, "models", "a.pt"), CACHE_PARTIAL);
	CHECK_EQ_INT(state_of(e.c, "games", "p.db"), CACHE_PARTIAL);
	CHECK_EQ_INT(used_of(e.c), (size - CHUNK) + CHUNK);

	/* Nothing more to find; and what was found is recorded. */
	memset(&r, 0, sizeof(r));
	CHECK_EQ_INT(cache_check(e.c, report_cb, &r), 2);
	CHECK_EQ_INT(r.n, 0);
	env_close_cache(&e);
	if (!env_open_cache(&e))
		goto out;
	f = make(e.c, "models", "a.pt", data, size, 0);
	if (f) {
		CHECK(cache_file_chunk_present(f, 0));
		CHECK(!cache_file_chunk_present(f, 1));
		CHECK(cache_file_chunk_present(f, 2));
		CHECK(!cache_file_complete(f));
		/* Fetched again, it verifies whole again. */
		CHECK_EQ_INT(cache_file_write_chunk(f, 1, data + CHUNK, CHUNK), 0);
		CHECK_EQ_INT(cache_file_finish(f), 0);
		cache_file_put(f);
	}
	CHECK_EQ_INT(state_of(e.c, "models", "a.pt"), CACHE_COMPLETE);
out:
	env_fini(&e);
}

static void test_version_change(void)
{
	struct hash128 v1 = hash_buf(data, SMALL), v2 = hash_buf(data + 1, SMALL),
		       v3 = hash_buf(data + 2, SMALL);
	struct cache_file *f, *held;
	struct cache_info info;
	char p1[512], p2[512];
	uint8_t back[64];
	struct env e;

	if (!env_init(&e, 0))
		return;
	cache_path(&e, &v1, p1, sizeof(p1));
	cache_path(&e, &v2, p2, sizeof(p2));
	cache_file_put(make(e.c, "models", "m.pt", data, SMALL, 1));
	CHECK(exists(p1));

	/* A new version at the path: the old copy, not open, goes at once. */
	held = make(e.c, "models", "m.pt", data + 1, SMALL, 1);
	CHECK(!exists(p1));
	CHECK_EQ_INT(cache_lookup(e.c, "models", "m.pt", &info), 0);
	CHECK(hash_equal(&info.hash, &v2));
	CHECK_EQ_INT(info.state, CACHE_COMPLETE);
	CHECK_EQ_INT(used_of(e.c), SMALL);

	/* Held open, the old copy stays readable until its last handle goes. */
	f = NULL;
	CHECK_EQ_INT(cache_file_get(e.c, "models", "m.pt", &v3, SMALL, &f), 0);
	CHECK(!exists(p2));
	CHECK_EQ_INT(state_of(e.c, "models", "m.pt"), CACHE_NONE);
	CHECK(held && pread(cache_file_fd(held), back, sizeof(back), 0) == (ssize_t)sizeof(back));
	CHECK(memcmp(back, data + 1, sizeof(back)) == 0);
	CHECK(cache_file_complete(held));
	CHECK_EQ_INT(used_of(e.c), SMALL);
	cache_file_put(held);
	CHECK_EQ_INT(used_of(e.c), 0);
	cache_file_put(f);

	/* And that is what a restart finds. */
	env_close_cache(&e);
	if (!env_open_cache(&e))
		goto out;
	CHECK_EQ_INT(cache_lookup(e.c, "models", "m.pt", &info), 0);
	CHECK(hash_equal(&info.hash, &v3));
	CHECK_EQ_INT(info.state, CACHE_NONE);
out:
	env_fini(&e);
}

/* ---- threads ---- */

#define BIG_CHUNKS 8
#define WRITERS 4
#define VERSIONS 10

struct big_writer {
	struct cache_file *f;
	const uint8_t *buf;
	int id;
};

static void *big_writer_main(void *arg)
{
	struct big_writer *w = arg;

	for (size_t i = (size_t)w->id; i < BIG_CHUNKS; i += WRITERS)
		CHECK_EQ_INT(cache_file_write_chunk(w->f, i, w->buf + i * CHUNK, CHUNK), 0);
	return NULL;
}

struct churn {
	struct cache *c;
	unsigned seed;
	bool checker;
};

static void *churn_main(void *arg)
{
	struct churn *ch = arg;
	struct reports r;

	for (int it = 0; it < 150; it++) {
		unsigned k = (unsigned)rand_r(&ch->seed) % VERSIONS;
		char path[32];
		struct hash128 w = hash_buf(data + k, SMALL), h = hash_buf(data + k, SMALL);
		struct cache_file *f = NULL;
		struct cache_info info;
		int ret;

		snprintf(path, sizeof(path), "v%u.pt", k);
		if (ch->checker) {
			if (it % 25 == 0) {
				memset(&r, 0, sizeof(r));
				CHECK(cache_check(ch->c, report_cb, &r) >= 0);
				CHECK_EQ_INT(r.n, 0);
			}
			ret = cache_evict(ch->c, "models", path);
			CHECK(ret == 0 || ret == -EBUSY || ret == -ENOENT);
			CHECK_EQ_INT(cache_lookup(ch->c, "models", path, &info), 0);
			continue;
		}
		if (cache_file_get(ch->c, "models", path, &w, SMALL, &f) != 0) {
			CHECK(!"get");
			continue;
		}
		CHECK_EQ_INT(cache_file_set_chunks(f, &h, 1), 0);
		if (!cache_file_complete(f) && cache_reserve(ch->c, SMALL) == 0) {
			CHECK_EQ_INT(cache_file_write_chunk(f, 0, data + k, SMALL), 0);
			CHECK_EQ_INT(cache_file_finish(f), 0);
		}
		cache_file_touch(f);
		CHECK(!cache_file_complete(f) || cache_file_range_present(f, 0, SMALL));
		cache_file_put(f);
	}
	return NULL;
}

static void test_threads(void)
{
	uint64_t size = BIG_CHUNKS * CHUNK, used, max, sum = 0;
	uint8_t *big = malloc(size);
	struct hash128 whole, chunks[BIG_CHUNKS];
	struct big_writer w[WRITERS];
	struct churn ch[WRITERS + 1];
	pthread_t th[WRITERS + 1];
	struct cache_file *f = NULL;
	struct env e;

	if (!big || !env_init(&e, 6 * SMALL)) {
		free(big);
		return;
	}
	for (size_t i = 0; i < BIG_CHUNKS; i++) {
		memcpy(big + i * CHUNK, data + (i % 3) * CHUNK, CHUNK);
		big[i * CHUNK] = (uint8_t)i; /* every chunk its own */
		chunks[i] = hash_buf(big + i * CHUNK, CHUNK);
	}
	whole = hash_buf(big, size);

	/* Chunks of one version written by several threads at once: every bit is recorded. */
	e.cfg.cache_max_size = 0;
	env_close_cache(&e);
	if (!env_open_cache(&e))
		goto out;
	CHECK_EQ_INT(cache_file_get(e.c, "models", "big.pt", &whole, size, &f), 0);
	if (!f)
		goto out;
	CHECK_EQ_INT(cache_file_set_chunks(f, chunks, BIG_CHUNKS), 0);
	for (int i = 0; i < WRITERS; i++) {
		w[i] = (struct big_writer){ .f = f, .buf = big, .id = i };
		pthread_create(&th[i], NULL, big_writer_main, &w[i]);
	}
	for (int i = 0; i < WRITERS; i++)
		pthread_join(th[i], NULL);
	cache_file_put(f);
	env_close_cache(&e);
	if (!env_open_cache(&e))
		goto out;
	f = NULL;
	CHECK_EQ_INT(cache_file_get(e.c, "models", "big.pt", &whole, size, &f), 0);
	if (f) {
		CHECK_EQ_INT(cache_file_cached_bytes(f), size);
		CHECK_EQ_INT(cache_file_finish(f), 0);
		cache_file_put(f);
	}
	CHECK_EQ_INT(cache_evict(e.c, "models", "big.pt"), 0);
	env_close_cache(&e);

	/* Fetches, evictions, checks and lookups racing under a tight limit. */
	e.cfg.cache_max_size = 6 * SMALL;
	if (!env_open_cache(&e))
		goto out;
	for (int i = 0; i <= WRITERS; i++) {
		ch[i] =
		    (struct churn){ .c = e.c, .seed = 17u + (unsigned)i, .checker = i == WRITERS };
		pthread_create(&th[i], NULL, churn_main, &ch[i]);
	}
	for (int i = 0; i <= WRITERS; i++)
		pthread_join(th[i], NULL);
	cache_usage(e.c, &used, &max);
	for (unsigned k = 0; k < VERSIONS; k++) {
		struct cache_info info;
		char path[32];

		snprintf(path, sizeof(path), "v%u.pt", k);
		CHECK_EQ_INT(cache_lookup(e.c, "models", path, &info), 0);
		CHECK(info.state != CACHE_PARTIAL); /* one chunk each */
		sum += info.cached_bytes;
	}
	CHECK_EQ_INT(used, sum);
	CHECK(used <= max);
	/* Every reservation was consumed: the whole limit can be had again. */
	CHECK_EQ_INT(cache_reserve(e.c, max), 0);
	CHECK_EQ_INT(used_of(e.c), 0);
	cache_release(e.c, max);
out:
	env_fini(&e);
	free(big);
}

TEST_MAIN(TEST(test_write_and_finish), TEST(test_empty_version), TEST(test_wrong_whole_hash),
	  TEST(test_persistence), TEST(test_unclean_restart), TEST(test_lru_eviction),
	  TEST(test_pin_directory), TEST(test_min_free), TEST(test_evict), TEST(test_check),
	  TEST(test_version_change), TEST(test_threads))
