/*
 * cache_verify — the part of the cache (sync/cache.h) that re-reads cache files against their
 * hashes: cache_check, and the loading of the cache at open (cache_load), which trusts nothing
 * on disk that the catalog does not record and nothing the catalog records that is not on disk.
 *
 * How it works:
 * - cache_check walks the versions one at a time by hash, holding a reference (so eviction
 *   skips it) but no lock while it reads. A partial copy has its present chunks re-hashed; a
 *   complete copy is hashed in one pass that gives the whole hash and every chunk's. Bad chunks
 *   are marked absent under the locks and recorded (mark_bad); a complete copy whose content is
 *   right but whose stored chunk list is not gets the list replaced.
 * - cache_load runs before the cache is shared, so it takes no locks. It reads every row of
 *   the catalog's table `local` into names and versions (rows of one version that disagree keep
 *   only the chunks all of them have), derives completion and byte counts from the bitmaps,
 *   orders the LRU list by last access, and then reconciles with the directory: versions whose
 *   file is missing or of the wrong size are dropped, files no row records are deleted.
 * - Durability (cache.c's header): the catalog meta key CACHE_SESSION_KEY holds the boot_id
 *   while the cache is open and CACHE_SESSION_CLEAN after a synced close. Finding neither at
 *   open means the kernel may have lost page-cache writes, so every present chunk of every
 *   partial copy is re-read and the bad ones dropped (complete copies were fdatasynced).
 */
#include "sync/cache.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sync/cache_int.h"
#include "sync/log.h"
#include "sync/util.h"

#define BOOT_ID_PATH "/proc/sys/kernel/random/boot_id"

/* ---- verification ---- */

typedef void (*bad_fn)(void *arg, size_t idx, const char *why);

/*
 * Re-reads the chunks set in @want and compares them with @chunks (NULL: unknown, then every
 * chunk in @want is bad). Bad ones are set in @bad and passed to @fn. @buf holds a chunk.
 * Returns how many were bad.
 */
static size_t verify_chunks(const struct cache_file *f, int fd, const struct hash128 *chunks,
			    const uint8_t *want, uint8_t *bad, uint8_t *buf, bad_fn fn, void *arg)
{
	size_t nbad = 0;

	for (size_t i = 0; i < f->nchunks; i++) {
		size_t len = (size_t)cache_chunk_len(f, i);
		char why[96];
		struct hash128 h;
		int ret;

		if (!cache_bit_get(want, i))
			continue;
		if (!chunks) {
			snprintf(why, sizeof(why), "no chunk hashes to check it against");
		} else {
			ret = pread_full(fd, buf, len, (uint64_t)i * HASH_CHUNK_SIZE);
			if (ret == 0) {
				h = hash_buf(buf, len);
				if (hash_equal(&h, &chunks[i]))
					continue;
				snprintf(why, sizeof(why), "hash mismatch");
			} else {
				snprintf(why, sizeof(why), "read error: %s", strerror(-ret));
			}
		}
		cache_bit_set(bad, i);
		nbad++;
		if (fn)
			fn(arg, i, why);
	}
	return nbad;
}

/* Marks the chunks in @bad absent (the version is then partial) and records it. */
static void mark_bad(struct cache *c, struct cache_file *f, const uint8_t *bad)
{
	struct cache_snap s = { 0 };
	int ret;

	pthread_mutex_lock(&c->persist_lock);
	pthread_mutex_lock(&c->lock);
	pthread_mutex_lock(&f->lock);
	for (size_t i = 0; i < f->nchunks; i++) {
		if (cache_bit_get(bad, i) && cache_bit_get(f->present, i)) {
			uint64_t len = cache_chunk_len(f, i);

			cache_bit_clear(f->present, i);
			f->cached_bytes = cache_sub_clamp(f->cached_bytes, len);
			c->used = cache_sub_clamp(c->used, len);
			f->complete = false;
			f->synced_at = 0;
		}
	}
	ret = cache_snap_take(f, false, &s);
	pthread_mutex_unlock(&f->lock);
	pthread_mutex_unlock(&c->lock);
	if (ret == 0)
		cache_persist_present(c, f, &s, NULL);
	pthread_mutex_unlock(&c->persist_lock);
	cache_snap_free(&s);
}

/* The names of @f, as "category\0path\0" strings in one array (free each, then the array). */
static char **names_copy_locked(struct cache_file *f, size_t *count)
{
	size_t n = 0, i = 0;
	char **out;

	for (struct cache_name *nm = f->names; nm; nm = nm->fnext)
		n++;
	out = calloc(n + 1, sizeof(*out));
	if (!out)
		return NULL;
	for (struct cache_name *nm = f->names; nm; nm = nm->fnext) {
		size_t lc = strlen(nm->key), lp = strlen(nm->path);

		out[i] = malloc(lc + 1 + lp + 1);
		if (!out[i])
			break;
		memcpy(out[i], nm->key, lc + 1 + lp + 1);
		i++;
	}
	*count = i;
	return out;
}

struct check_ctx {
	void (*report)(void *arg, const char *category, const char *path, const char *what);
	void *arg;
	char **names;
	size_t n_names;
	const char *hex;
	size_t nbad;
};

static void check_say(struct check_ctx *x, const char *what)
{
	for (size_t i = 0; i < x->n_names; i++) {
		const char *category = x->names[i];

		x->report(x->arg, category, category + strlen(category) + 1, what);
	}
	if (!x->n_names)
		log_msg(LOG_WARNING, "cache: check %s: %s", x->hex, what);
}

static void check_bad_chunk(void *arg, size_t idx, const char *why)
{
	struct check_ctx *x = arg;
	char what[160];

	snprintf(what, sizeof(what), "chunk %zu: %s; marked absent", idx, why);
	check_say(x, what);
}

/* Verifies one version (a reference held). */
static void check_one(struct cache *c, struct cache_file *f, uint8_t *buf, struct check_ctx *x)
{
	size_t blen = cache_bitmap_len(f->nchunks);
	uint8_t *want = calloc(blen + 1, 1), *bad = calloc(blen + 1, 1);
	struct hash128 *chunks = NULL, *calc = NULL, whole;
	uint64_t size = 0;
	size_t ncalc = 0;
	bool complete;
	int ret;

	if (!want || !bad)
		goto out;
	pthread_mutex_lock(&f->lock);
	complete = f->complete;
	memcpy(want, f->present, blen);
	if (f->chunks) {
		chunks = malloc(f->nchunks * sizeof(*chunks) + 1);
		if (chunks)
			memcpy(chunks, f->chunks, f->nchunks * sizeof(*chunks));
	}
	pthread_mutex_unlock(&f->lock);

	if (!complete) {
		if (verify_chunks(f, f->fd, chunks, want, bad, buf, check_bad_chunk, x))
			mark_bad(c, f, bad);
		goto out;
	}
	/* A complete copy: one pass gives the whole hash and every chunk's. */
	ret = hash_fd(f->fd, &whole, &size, &calc, &ncalc);
	if (ret) {
		char what[96];

		snprintf(what, sizeof(what), "read error: %s; copy dropped", strerror(-ret));
		check_say(x, what);
		memset(bad, 0xff, blen);
		mark_bad(c, f, bad);
		goto out;
	}
	if (size == f->size && hash_equal(&whole, &f->hash)) {
		/* The content is right. A stored chunk list that disagrees is what is wrong. */
		if (ncalc == f->nchunks &&
		    (!chunks || memcmp(chunks, calc, ncalc * sizeof(*calc)) != 0)) {
			if (chunks)
				check_say(x, "stored chunk hashes were wrong; replaced");
			cache_store_chunks(f, calc, ncalc, true);
		}
		goto out;
	}
	x->nbad = 0;
	for (size_t i = 0; chunks && i < f->nchunks && i < ncalc; i++) {
		if (!hash_equal(&chunks[i], &calc[i])) {
			cache_bit_set(bad, i);
			check_bad_chunk(x, i, "hash mismatch");
			x->nbad++;
		}
	}
	if (!x->nbad) {
		check_say(x, "whole-file hash mismatch; copy dropped");
		memset(bad, 0xff, blen);
	}
	mark_bad(c, f, bad);
out:
	free(calc);
	free(chunks);
	free(bad);
	free(want);
}

int cache_check(struct cache *c,
		void (*report)(void *arg, const char *category, const char *path, const char *what),
		void *arg)
{
	struct hash128 *list = NULL;
	uint8_t *buf = NULL;
	size_t n = 0, checked = 0;
	int ret = -EINVAL;

	if (!c || !report)
		goto out;
	ret = -ENOMEM;
	buf = malloc(HASH_CHUNK_SIZE);
	if (!buf)
		goto out;
	pthread_mutex_lock(&c->lock);
	list = malloc((c->n_files + 1) * sizeof(*list));
	for (struct cache_file *f = c->lru_head; list && f; f = f->lru_next)
		list[n++] = f->hash;
	pthread_mutex_unlock(&c->lock);
	if (!list)
		goto out;

	/* One at a time, by hash: what was evicted meanwhile is skipped, and only one extra
	 * file is open at any moment. The reference keeps it from going while it is read. */
	for (size_t i = 0; i < n; i++) {
		struct check_ctx x = { .report = report, .arg = arg };
		struct cache_file *f;

		pthread_mutex_lock(&c->lock);
		f = cache_files_find(c, &list[i]);
		if (f && cache_file_ref_locked(c, f) == 0)
			x.names = names_copy_locked(f, &x.n_names);
		else
			f = NULL;
		pthread_mutex_unlock(&c->lock);
		if (!f)
			continue;
		x.hex = f->hex;
		check_one(c, f, buf, &x);
		for (size_t j = 0; x.names && j < x.n_names; j++)
			free(x.names[j]);
		free(x.names);
		cache_file_put(f);
		checked++;
	}
	ret = (int)(checked > INT32_MAX ? INT32_MAX : checked);
out:
	free(list);
	free(buf);
	return ret;
}

/* ---- loading at open ---- */

struct broken {
	struct broken *next;
	char *category;
	char *path;
};

struct load_ctx {
	struct cache *c;
	struct broken *broken;	/* rows whose copy columns are dropped after the walk */
};

static int note_broken(struct load_ctx *x, const struct cat_local *l, const char *why)
{
	struct broken *b = calloc(1, sizeof(*b));

	log_msg(LOG_WARNING, "cache: %s/%s: %s; record dropped", l->category, l->path, why);
	if (!b)
		return -ENOMEM;
	b->category = strdup(l->category);
	b->path = strdup(l->path);
	b->next = x->broken;
	x->broken = b;
	return b->category && b->path ? 0 : -ENOMEM;
}

/* Takes a row's copy into version @f (new, or shared with rows seen before). */
static void load_copy(struct cache_file *f, const struct cat_local *l, bool first)
{
	size_t blen = cache_bitmap_len(f->nchunks);

	for (size_t i = 0; i < blen; i++) {
		uint8_t b = i < l->present_len ? l->present[i] : 0;

		/* Rows of one version are written together; if they disagree, trust the least. */
		f->present[i] = first ? b : (uint8_t)(f->present[i] & b);
	}
	if (f->nchunks % 8)
		f->present[blen - 1] &= (uint8_t)((1u << (f->nchunks % 8)) - 1);
	if (first || !l->synced_at)
		f->synced_at = l->synced_at;
	if (l->last_access > f->last_access)
		f->last_access = l->last_access;
	if (!f->chunks && l->chunks && l->n_chunks == f->nchunks) {
		f->chunks = malloc(f->nchunks * sizeof(*f->chunks) + 1);
		if (f->chunks)
			memcpy(f->chunks, l->chunks, f->nchunks * sizeof(*f->chunks));
	}
}

/* catalog_local_foreach callback (catalog lock held; the cache is not shared yet). */
static int load_row(void *arg, const struct cat_local *l)
{
	struct load_ctx *x = arg;
	struct cache *c = x->c;
	struct cache_file *f = NULL;
	struct cache_name *n;
	bool first = false;
	int ret = 0;

	if (!cache_valid_pin_key(l->category, l->path)) {
		log_msg(LOG_WARNING, "cache: ignoring a record with a bad path '%s/%s'",
			l->category, l->path);
		return 0;
	}
	n = cache_name_new(l->category, l->path);
	if (!n)
		return -ENOMEM;
	n->pinned = l->pinned;
	if (l->last_error && *l->last_error) {
		n->last_error = strdup(l->last_error);
		if (!n->last_error) {
			ret = -ENOMEM;
			goto out;
		}
	}
	if (l->has_version && (!*l->path || l->size > INT64_MAX)) {
		ret = note_broken(x, l, "malformed copy");
	} else if (l->has_version) {
		f = cache_files_find(c, &l->hash);
		if (f && f->size != l->size) {
			ret = note_broken(x, l, "size differs from another record of the version");
			f = NULL;
		} else if (!f) {
			f = cache_file_new(c, &l->hash, l->size);
			if (!f || cache_files_insert(c, f) != 0) {
				cache_file_free(f);
				ret = -ENOMEM;
				goto out;
			}
			first = true;
		}
		if (f)
			load_copy(f, l, first);
		if (ret)
			goto out;
	}
	if (!f && !n->pinned && !n->last_error)
		goto out; /* records nothing; pruned after the walk */
	ret = cache_names_insert(c, n);
	if (ret)
		goto out;
	if (f) {
		n->file = f;
		n->fnext = f->names;
		f->names = n;
	}
	n = NULL;
out:
	cache_name_free(n);
	return ret;
}

/* The kernel's boot id ("" when unknown: then every unclean stop is treated as a crash). */
static void boot_id(char out[64])
{
	char *s = NULL;

	out[0] = '\0';
	if (read_small_file(BOOT_ID_PATH, &s) == 0)
		snprintf(out, 64, "%s", str_strip(s));
	free(s);
}

/* After an unclean stop of another boot: re-reads the present chunks of partial copies. */
static void verify_partial_copies(struct cache *c)
{
	uint8_t *buf = malloc(HASH_CHUNK_SIZE);
	size_t copies = 0, lost = 0;

	if (!buf) {
		log_msg(LOG_ERR, "cache: out of memory; partial copies are trusted as they are");
		return;
	}
	for (struct cache_file *f = c->lru_head; f; f = f->lru_next) {
		size_t blen = cache_bitmap_len(f->nchunks), nbad;
		uint8_t *bad;
		int fd;

		if (f->complete || !f->cached_bytes)
			continue;
		bad = calloc(blen + 1, 1);
		fd = openat(c->dir_fd, f->hex, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
		if (!bad || fd < 0) {
			memset(f->present, 0, blen); /* cannot check: nothing is trusted */
			f->cached_bytes = 0;
		} else {
			nbad = verify_chunks(f, fd, f->chunks, f->present, bad, buf, NULL, NULL);
			if (nbad) {
				for (size_t i = 0; i < f->nchunks; i++) {
					if (cache_bit_get(bad, i)) {
						cache_bit_clear(f->present, i);
						f->cached_bytes -= cache_chunk_len(f, i);
					}
				}
				lost += nbad;
			}
		}
		copies++;
		if (fd >= 0)
			close(fd);
		free(bad);
		{
			struct cache_snap s;

			if (cache_snap_take(f, false, &s) == 0)
				cache_persist_present(c, f, &s, NULL);
			cache_snap_free(&s);
		}
	}
	log_msg(copies ? LOG_WARNING : LOG_INFO,
		"cache: unclean shutdown of an earlier boot: %zu partial copies re-verified, "
		"%zu chunks dropped", copies, lost);
	free(buf);
}

static int last_access_cmp(const void *a, const void *b)
{
	const struct cache_file *fa = *(struct cache_file *const *)a;
	const struct cache_file *fb = *(struct cache_file *const *)b;

	return (fa->last_access > fb->last_access) - (fa->last_access < fb->last_access);
}

/* Drops versions whose file is gone or has the wrong size, and files nothing records. */
static int reconcile_disk(struct cache *c)
{
	struct cache_file **all = calloc(c->n_files + 1, sizeof(*all));
	size_t n = 0;
	DIR *dir = NULL;
	struct dirent *de;
	int dfd, ret = 0;

	if (!all)
		return -ENOMEM;
	for (size_t b = 0; b < c->files_cap; b++) {
		for (struct cache_file *f = c->files[b]; f; f = f->hnext)
			all[n++] = f;
	}
	for (size_t i = 0; i < n; i++) {
		struct cache_file *f = all[i];
		char trash[CACHE_TRASH_NAME_MAX];
		struct stat st;
		const char *why = NULL;

		if (fstatat(c->dir_fd, f->hex, &st, AT_SYMLINK_NOFOLLOW) < 0)
			why = errno == ENOENT ? "cache file missing" : "cache file unreadable";
		else if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size != f->size)
			why = "cache file has the wrong size";
		if (!why)
			continue;
		for (struct cache_name *nm = f->names; nm; nm = nm->fnext)
			log_msg(LOG_WARNING, "cache: %s/%s: %s (%s); record dropped", nm->key,
				nm->path, why, f->hex);
		cache_file_detach_locked(c, f, trash);
		cache_trash_unlink(c, trash);
		if (catalog_local_drop(c->cat, &f->hash, NULL, NULL) != 0)
			log_msg(LOG_WARNING, "cache: %s: record not dropped", f->hex);
		cache_file_free(f);
	}
	free(all);

	dfd = dup(c->dir_fd);
	if (dfd < 0 || !(dir = fdopendir(dfd))) {
		ret = -errno;
		if (dfd >= 0)
			close(dfd);
		log_msg(LOG_ERR, "cache: list %s: %s", c->dir, strerror(-ret));
		return ret;
	}
	rewinddir(dir);
	while ((de = readdir(dir))) {
		char text[HASH_STR_LEN + 8];
		struct hash128 h;

		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (strlen(de->d_name) == CACHE_HEX_LEN) {
			memcpy(text, "xxh3-128:", 9);
			memcpy(text + 9, de->d_name, CACHE_HEX_LEN + 1);
			if (hash_parse(text, &h) == 0 && cache_files_find(c, &h))
				continue;
		}
		if (unlinkat(c->dir_fd, de->d_name, 0) < 0)
			log_msg(LOG_WARNING, "cache: %s/%s is not a cache file and cannot be "
				"removed: %s", c->dir, de->d_name, strerror(errno));
		else
			log_msg(LOG_WARNING, "cache: removed %s/%s, which nothing records",
				c->dir, de->d_name);
	}
	closedir(dir);
	return ret;
}

int cache_load(struct cache *c)
{
	struct load_ctx x = { .c = c };
	struct cache_file **order = NULL;
	char boot[64], *session = NULL;
	size_t n = 0;
	int ret;

	ret = catalog_local_foreach(c->cat, load_row, &x);
	while (x.broken) {
		struct broken *b = x.broken;

		x.broken = b->next;
		if (ret == 0 && b->category && b->path)
			catalog_local_drop(c->cat, NULL, b->category, b->path);
		free(b->category);
		free(b->path);
		free(b);
	}
	if (ret)
		goto out;

	/* Completion and byte counts follow from the bitmaps. */
	ret = -ENOMEM;
	order = calloc(c->n_files + 1, sizeof(*order));
	if (!order)
		goto out;
	for (size_t b = 0; b < c->files_cap; b++) {
		for (struct cache_file *f = c->files[b]; f; f = f->hnext) {
			f->cached_bytes = 0;
			for (size_t i = 0; i < f->nchunks; i++) {
				if (cache_bit_get(f->present, i))
					f->cached_bytes += cache_chunk_len(f, i);
			}
			f->complete = f->synced_at > 0 && cache_all_present(f);
			if (!f->complete)
				f->synced_at = 0;
			order[n++] = f;
		}
	}
	qsort(order, n, sizeof(*order), last_access_cmp);
	for (size_t i = 0; i < n; i++)
		cache_lru_append(c, order[i]);

	ret = reconcile_disk(c);
	if (ret)
		goto out;

	/* No marker at all is a new cache; an unreadable one is not trusted. */
	boot_id(boot);
	ret = catalog_meta_get(c->cat, CACHE_SESSION_KEY, &session);
	if ((ret == 0 && strcmp(session, CACHE_SESSION_CLEAN) != 0 &&
	     (!boot[0] || strcmp(session, boot) != 0)) ||
	    (ret != 0 && ret != -ENOENT))
		verify_partial_copies(c);
	ret = catalog_meta_set_durable(c->cat, CACHE_SESSION_KEY, boot[0] ? boot : "unknown");
	if (ret)
		goto out;
	if (catalog_local_prune(c->cat, NULL, NULL) != 0)
		log_msg(LOG_WARNING, "cache: empty records not pruned");

	c->used = 0;
	for (struct cache_file *f = c->lru_head; f; f = f->lru_next)
		c->used += f->cached_bytes;
	ret = 0;
out:
	free(session);
	free(order);
	return ret;
}
