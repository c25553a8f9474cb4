/*
 * cache — this node's copies of other nodes' versions: one sparse file per version under
 * <state_dir>/cache, a bitmap of verified chunks each, rows in the catalog's table `local`, and
 * the space rules (cache.max_size, cache.min_free) with LRU eviction.
 *
 * How it works:
 * - A struct cache_file is one version (content hash): the file <cache dir>/<32 hex>, made sparse
 *   with ftruncate to its size, mode 0600. Identical content at several paths is one version with
 *   several names (struct cache_name, one per (category, path)); the catalog has one row per
 *   name and writes the copy columns of all of them together, by hash. Names also carry pins
 *   and last errors, for paths with nothing cached too, and directory pins: a pin on a
 *   directory, or on a whole category (path ""), covers everything below it.
 * - Handles are references: the first get opens the fd, the last put closes it. A version that
 *   loses its last name (a new version at its path, eviction, cache_evict) is detached: it leaves
 *   the tables and its file is renamed aside and unlinked at once, so the same content can be
 *   cached again right away; holders of a handle keep using their fd, and the memory and the
 *   space (counted as used until then) go with the last put.
 * - Persistence: each chunk write commits its bit (one small statement), set_chunks the chunk
 *   list, finish the completion (synced_at). last_access is written lazily, when the last handle
 *   is put and at close: the LRU order itself is a list in memory kept in touch order.
 * - Durability without an fsync per chunk: pwrite only reaches the page cache, so a chunk
 *   recorded present can be lost by a power cut or a kernel crash (not by a daemon crash: the
 *   page cache survives kill -9). finish fdatasyncs the file before marking it complete, so a
 *   complete copy is durable. For partial copies the catalog's meta key "cache_session" holds the
 *   kernel's boot_id while the cache is open, and "clean" once cache_close has synced the cache's
 *   filesystem. cache_open finding neither "clean" nor the current boot re-reads every present
 *   chunk of every partial copy and drops the bad ones, so a torn chunk is never served; after a
 *   clean stop or a daemon crash nothing is reread. (Verified lazily instead, a chunk would have
 *   to be checked on the read path, where no I/O may happen under the bitmap's lock.)
 * - Space: used = the bytes of present chunks (what was reserved and written; block rounding
 *   and metadata are not counted, the real disk is what min_free checks with statvfs); reserved
 *   = what fetches reserved and have not written yet. A reservation fits when used + reserved +
 *   bytes <= max_size (if set) and f_bavail * f_frsize of the cache's filesystem stays >=
 *   min_free (bytes, or percent of f_blocks * f_frsize) + reserved + bytes. Otherwise versions
 *   are evicted in LRU order: complete ones first, then partial ones that nobody is fetching (a
 *   fetch holds a handle), never one that is open or under a pin. The candidates are first
 *   checked to be enough all together, so a reservation that must fail evicts nothing.
 *   Evicting deletes the file and clears the copy columns of its rows; a row that still holds
 *   a pin or an error stays (then without a copy), the others are deleted.
 *
 * Files: this one has the core (open and close, handles, chunk writes, completion, names, pins,
 * space and eviction); cache_verify.c re-reads cache files against their hashes (cache_check,
 * and at open the loading of the catalog's rows, the reconciliation with the directory and the
 * re-check of partial copies); cache_int.h has the structures both share and the locking rules
 * (order: c->persist_lock, then c->lock, then f->lock; only persist_lock is held across a
 * catalog call).
 */
#include "sync/cache.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "sync/cache_int.h"
#include "sync/log.h"
#include "sync/util.h"

#define CACHE_SUBDIR "cache"
#define TABLE_MIN_CAP 64

/* ---- small helpers ---- */

static uint64_t add_sat(uint64_t a, uint64_t b)
{
	uint64_t r;

	return __builtin_add_overflow(a, b, &r) ? UINT64_MAX : r;
}

static bool valid_file_key(const char *category, const char *path)
{
	return category && *category && !strchr(category, '/') &&
	       path_is_clean_relative(category) && path && path_is_clean_relative(path);
}

bool cache_valid_pin_key(const char *category, const char *path)
{
	return category && *category && !strchr(category, '/') &&
	       path_is_clean_relative(category) && path && (!*path || path_is_clean_relative(path));
}

/* FNV-1a of category '\0' path[0..path_len): names are looked up by prefixes of a path. */
static uint64_t key_hash(const char *category, const char *path, size_t path_len)
{
	uint64_t h = 0xcbf29ce484222325ull;

	for (const char *p = category; *p; p++)
		h = (h ^ (uint8_t)*p) * 0x100000001b3ull;
	h *= 0x100000001b3ull; /* the separator */
	for (size_t i = 0; i < path_len; i++)
		h = (h ^ (uint8_t)path[i]) * 0x100000001b3ull;
	return h;
}

static void hash_hex(const struct hash128 *h, char out[CACHE_HEX_LEN + 1])
{
	char s[HASH_STR_LEN];

	hash_format(h, s);
	memcpy(out, s + HASH_STR_LEN - 1 - CACHE_HEX_LEN, CACHE_HEX_LEN + 1);
}

/* ---- names ---- */

struct cache_name *cache_name_new(const char *category, const char *path)
{
	size_t lc = strlen(category), lp = strlen(path);
	struct cache_name *n = calloc(1, sizeof(*n) + lc + 1 + lp + 1);

	if (!n)
		return NULL;
	memcpy(n->key, category, lc + 1);
	memcpy(n->key + lc + 1, path, lp + 1);
	n->path = n->key + lc + 1;
	n->key_hash = key_hash(category, path, lp);
	return n;
}

void cache_name_free(struct cache_name *n)
{
	if (n) {
		free(n->last_error);
		free(n);
	}
}

/* The name (category, path[0..path_len)), or NULL. c->lock held. */
static struct cache_name *names_find(struct cache *c, const char *category, const char *path,
				     size_t path_len)
{
	uint64_t h = key_hash(category, path, path_len);

	if (!c->names_cap)
		return NULL;
	for (struct cache_name *n = c->names[h & (c->names_cap - 1)]; n; n = n->hnext) {
		if (n->key_hash == h && strcmp(n->key, category) == 0 &&
		    strlen(n->path) == path_len && memcmp(n->path, path, path_len) == 0)
			return n;
	}
	return NULL;
}

/* The bucket count for @count entries: a power of 2, at least TABLE_MIN_CAP. */
static size_t table_cap_for(size_t cap, size_t count)
{
	size_t ncap = cap ? cap : TABLE_MIN_CAP;

	while (ncap < count)
		ncap *= 2;
	return ncap;
}

/* Makes room for one more name (rehashing into more buckets). 0 or -ENOMEM. */
static int names_grow(struct cache *c)
{
	size_t ncap = table_cap_for(c->names_cap, c->n_names + 1);
	struct cache_name **nb;

	if (ncap == c->names_cap)
		return 0;
	nb = calloc(ncap, sizeof(*nb));
	if (!nb)
		return -ENOMEM;
	for (size_t i = 0; i < c->names_cap; i++) {
		struct cache_name *n = c->names[i], *next;

		for (; n; n = next) {
			next = n->hnext;
			n->hnext = nb[n->key_hash & (ncap - 1)];
			nb[n->key_hash & (ncap - 1)] = n;
		}
	}
	free(c->names);
	c->names = nb;
	c->names_cap = ncap;
	return 0;
}

int cache_names_insert(struct cache *c, struct cache_name *n)
{
	size_t b;
	int ret;

	ret = names_grow(c);
	if (ret)
		return ret;
	b = n->key_hash & (c->names_cap - 1);
	n->hnext = c->names[b];
	c->names[b] = n;
	c->n_names++;
	if (n->pinned)
		c->n_pins++;
	return 0;
}

static void names_remove(struct cache *c, struct cache_name *n)
{
	struct cache_name **pp = &c->names[n->key_hash & (c->names_cap - 1)];

	while (*pp && *pp != n)
		pp = &(*pp)->hnext;
	if (*pp) {
		*pp = n->hnext;
		c->n_names--;
		if (n->pinned)
			c->n_pins--;
	}
	n->hnext = NULL;
}

/* Forgets @n once it records nothing (no copy, no pin, no error). c->lock held. */
static void name_release_locked(struct cache *c, struct cache_name *n)
{
	if (n->file || n->pinned || n->last_error)
		return;
	names_remove(c, n);
	cache_name_free(n);
}

/* True when a pin covers (category, path): on it, a directory above it, or its category. */
static bool pin_covers_locked(struct cache *c, const char *category, const char *path)
{
	size_t len = strlen(path);

	if (!c->n_pins)
		return false;
	for (;;) {
		struct cache_name *n = names_find(c, category, path, len);

		if (n && n->pinned)
			return true;
		if (len == 0)
			return false;
		while (len > 0 && path[len - 1] != '/')
			len--;
		if (len > 0)
			len--; /* drop the '/' too */
	}
}

static bool file_pinned_locked(struct cache *c, struct cache_file *f)
{
	for (struct cache_name *n = f->names; n; n = n->fnext) {
		if (pin_covers_locked(c, n->key, n->path))
			return true;
	}
	return false;
}

/* ---- versions ---- */

struct cache_file *cache_files_find(struct cache *c, const struct hash128 *hash)
{
	if (!c->files_cap)
		return NULL;
	for (struct cache_file *f = c->files[hash->lo & (c->files_cap - 1)]; f; f = f->hnext) {
		if (hash_equal(&f->hash, hash))
			return f;
	}
	return NULL;
}

/* Makes room for one more version (rehashing into more buckets). 0 or -ENOMEM. */
static int files_grow(struct cache *c)
{
	size_t ncap = table_cap_for(c->files_cap, c->n_files + 1);
	struct cache_file **nb;

	if (ncap == c->files_cap)
		return 0;
	nb = calloc(ncap, sizeof(*nb));
	if (!nb)
		return -ENOMEM;
	for (size_t i = 0; i < c->files_cap; i++) {
		struct cache_file *f = c->files[i], *next;

		for (; f; f = next) {
			next = f->hnext;
			f->hnext = nb[f->hash.lo & (ncap - 1)];
			nb[f->hash.lo & (ncap - 1)] = f;
		}
	}
	free(c->files);
	c->files = nb;
	c->files_cap = ncap;
	return 0;
}

int cache_files_insert(struct cache *c, struct cache_file *f)
{
	size_t b;
	int ret;

	ret = files_grow(c);
	if (ret)
		return ret;
	b = f->hash.lo & (c->files_cap - 1);
	f->hnext = c->files[b];
	c->files[b] = f;
	c->n_files++;
	return 0;
}

static void files_remove(struct cache *c, struct cache_file *f)
{
	struct cache_file **pp = &c->files[f->hash.lo & (c->files_cap - 1)];

	while (*pp && *pp != f)
		pp = &(*pp)->hnext;
	if (*pp) {
		*pp = f->hnext;
		c->n_files--;
	}
	f->hnext = NULL;
}

void cache_lru_append(struct cache *c, struct cache_file *f)
{
	f->lru_next = NULL;
	f->lru_prev = c->lru_tail;
	if (c->lru_tail)
		c->lru_tail->lru_next = f;
	else
		c->lru_head = f;
	c->lru_tail = f;
}

static void lru_unlink(struct cache *c, struct cache_file *f)
{
	if (f->lru_prev)
		f->lru_prev->lru_next = f->lru_next;
	else if (c->lru_head == f)
		c->lru_head = f->lru_next;
	if (f->lru_next)
		f->lru_next->lru_prev = f->lru_prev;
	else if (c->lru_tail == f)
		c->lru_tail = f->lru_prev;
	f->lru_prev = f->lru_next = NULL;
}

struct cache_file *cache_file_new(struct cache *c, const struct hash128 *hash, uint64_t size)
{
	struct cache_file *f = calloc(1, sizeof(*f));

	if (!f)
		return NULL;
	f->c = c;
	f->hash = *hash;
	hash_hex(hash, f->hex);
	f->size = size;
	f->nchunks = (size_t)((size + HASH_CHUNK_SIZE - 1) / HASH_CHUNK_SIZE);
	f->fd = -1;
	f->present = calloc(cache_bitmap_len(f->nchunks) + 1, 1);
	if (!f->present || pthread_mutex_init(&f->lock, NULL) != 0) {
		free(f->present);
		free(f);
		return NULL;
	}
	return f;
}

void cache_file_free(struct cache_file *f)
{
	if (!f)
		return;
	if (f->fd >= 0)
		close(f->fd);
	pthread_mutex_destroy(&f->lock);
	free(f->present);
	free(f->chunks);
	free(f);
}

/* Opens the version's file (creating it sparse and empty with @create). c->lock held. */
static int file_open_fd_locked(struct cache *c, struct cache_file *f, bool create)
{
	int flags = O_RDWR | O_CLOEXEC | O_NOFOLLOW | (create ? O_CREAT | O_TRUNC : 0);
	int fd, ret = 0;

	fd = openat(c->dir_fd, f->hex, flags, 0600);
	if (fd < 0) {
		ret = -errno;
		log_msg(LOG_ERR, "cache: open %s/%s: %s", c->dir, f->hex, strerror(-ret));
		goto out;
	}
	if (create && ftruncate(fd, (off_t)f->size) < 0) {
		ret = -errno;
		log_msg(LOG_ERR, "cache: size %s/%s: %s", c->dir, f->hex, strerror(-ret));
		close(fd);
		unlinkat(c->dir_fd, f->hex, 0);
		goto out;
	}
	f->fd = fd;
out:
	return ret;
}

int cache_file_ref_locked(struct cache *c, struct cache_file *f)
{
	int ret = 0;

	if (f->refs == 0 && f->fd < 0)
		ret = file_open_fd_locked(c, f, false);
	if (ret == 0)
		f->refs++;
	return ret;
}

bool cache_file_detach_locked(struct cache *c, struct cache_file *f,
			      char trash[CACHE_TRASH_NAME_MAX])
{
	struct cache_name *n = f->names;

	files_remove(c, f);
	lru_unlink(c, f);
	f->detached = true;
	f->names = NULL;
	while (n) {
		struct cache_name *next = n->fnext;

		n->file = NULL;
		n->fnext = NULL;
		name_release_locked(c, n);
		n = next;
	}
	snprintf(trash, CACHE_TRASH_NAME_MAX, "%s.%llu.dead", f->hex,
		 (unsigned long long)++c->trash_seq);
	if (renameat(c->dir_fd, f->hex, c->dir_fd, trash) < 0) {
		if (errno != ENOENT)
			log_msg(LOG_ERR, "cache: rename %s/%s: %s", c->dir, f->hex,
				strerror(errno));
		trash[0] = '\0';
	}
	if (f->refs)
		return false;
	pthread_mutex_lock(&f->lock);
	c->used = cache_sub_clamp(c->used, f->cached_bytes);
	pthread_mutex_unlock(&f->lock);
	return true;
}

void cache_trash_unlink(struct cache *c, const char *trash)
{
	if (trash[0] && unlinkat(c->dir_fd, trash, 0) < 0 && errno != ENOENT)
		log_msg(LOG_ERR, "cache: unlink %s/%s: %s", c->dir, trash, strerror(errno));
}

/* Removes @n from its version's list of names. c->lock held. */
static void name_unlink_file(struct cache_name *n)
{
	struct cache_name **pp;

	if (!n->file)
		return;
	for (pp = &n->file->names; *pp && *pp != n; pp = &(*pp)->fnext)
		;
	if (*pp)
		*pp = n->fnext;
	n->fnext = NULL;
	n->file = NULL;
}

bool cache_all_present(const struct cache_file *f)
{
	for (size_t i = 0; i < f->nchunks; i++) {
		if (!cache_bit_get(f->present, i))
			return false;
	}
	return true;
}

int cache_snap_take(const struct cache_file *f, bool with_chunks, struct cache_snap *s)
{
	memset(s, 0, sizeof(*s));
	s->present_len = cache_bitmap_len(f->nchunks);
	s->present = malloc(s->present_len + 1);
	if (!s->present)
		return -ENOMEM;
	memcpy(s->present, f->present, s->present_len);
	if (with_chunks && f->chunks) {
		s->chunks = malloc(f->nchunks * sizeof(*s->chunks) + 1);
		if (!s->chunks) {
			free(s->present);
			s->present = NULL;
			return -ENOMEM;
		}
		memcpy(s->chunks, f->chunks, f->nchunks * sizeof(*s->chunks));
	}
	s->cached_bytes = f->cached_bytes;
	s->synced_at = f->complete ? f->synced_at : 0;
	s->last_access = f->last_access;
	s->detached = f->detached;
	return 0;
}

void cache_snap_free(struct cache_snap *s)
{
	free(s->present);
	free(s->chunks);
	s->present = NULL;
	s->chunks = NULL;
}

int cache_persist_present(struct cache *c, struct cache_file *f, const struct cache_snap *s,
			  const char *error)
{
	int ret;

	if (s->detached)
		return 0; /* its rows belong to whatever version is there now */
	ret = catalog_local_set_present(c->cat, &f->hash, s->present, s->present_len,
					s->cached_bytes, s->synced_at, error);
	if (ret)
		log_msg(LOG_WARNING, "cache: %s: state not recorded (%s); may be refetched after a "
			"restart", f->hex, strerror(-ret));
	return ret;
}

/* ---- handles ---- */

int cache_file_find(struct cache *c, const char *category, const char *path,
		    const struct hash128 *hash, uint64_t size, struct cache_file **out)
{
	struct cache_name *n;
	struct cache_file *f;
	int ret = -ENOENT;

	if (!c || !valid_file_key(category, path) || !hash || !out)
		return -EINVAL;
	pthread_mutex_lock(&c->lock);
	n = names_find(c, category, path, strlen(path));
	f = n ? n->file : NULL;
	if (f && hash_equal(&f->hash, hash) && f->size == size) {
		ret = cache_file_ref_locked(c, f);
		if (ret == 0)
			*out = f;
	}
	pthread_mutex_unlock(&c->lock);
	return ret;
}

int cache_file_get(struct cache *c, const char *category, const char *path,
		   const struct hash128 *hash, uint64_t size, struct cache_file **out)
{
	struct cache_name *n, *fresh_name = NULL;
	struct cache_file *f = NULL, *fresh_file = NULL, *old = NULL;
	char trash[CACHE_TRASH_NAME_MAX] = "";
	struct cache_snap s = { 0 };
	bool own_old = false, plocked = false, locked = false, got = false;
	int ret = -EINVAL;

	if (!c || !valid_file_key(category, path) || !hash || !out || size > INT64_MAX)
		goto out;
	/* The common case, an open of what is cached already, needs neither the catalog nor
	 * persist_lock (a writer may hold that across a catalog call). */
	ret = cache_file_find(c, category, path, hash, size, out);
	if (ret != -ENOENT)
		goto out; /* found (*out set), or an error */
	ret = -ENOMEM;
	fresh_name = cache_name_new(category, path);
	fresh_file = cache_file_new(c, hash, size);
	if (!fresh_name || !fresh_file)
		goto out;

	pthread_mutex_lock(&c->persist_lock);
	plocked = true;
	pthread_mutex_lock(&c->lock);
	locked = true;
	n = names_find(c, category, path, strlen(path));
	f = cache_files_find(c, hash);
	if (f && f->size != size) {
		log_msg(LOG_ERR, "cache: %s/%s: version %s asked with size %llu, cached with %llu",
			category, path, f->hex, (unsigned long long)size,
			(unsigned long long)f->size);
		ret = -EINVAL;
		goto out;
	}
	if (f && n && n->file == f) {
		ret = cache_file_ref_locked(c, f); /* nothing changes on disk or in the catalog */
		got = ret == 0;
		goto out;
	}
	if (!n) {
		ret = cache_names_insert(c, fresh_name);
		if (ret)
			goto out;
		n = fresh_name;
		fresh_name = NULL;
	}
	if (!f) {
		ret = file_open_fd_locked(c, fresh_file, true);
		if (ret == 0) {
			ret = cache_files_insert(c, fresh_file);
			if (ret) {
				close(fresh_file->fd);
				fresh_file->fd = -1;
				unlinkat(c->dir_fd, fresh_file->hex, 0);
			}
		}
		if (ret) {
			name_release_locked(c, n);
			goto out;
		}
		f = fresh_file;
		fresh_file = NULL;
		f->refs = 1;
		f->last_access = now_s(); /* recorded with the row below */
		cache_lru_append(c, f);
	} else {
		ret = cache_file_ref_locked(c, f);
		if (ret) {
			name_release_locked(c, n);
			goto out;
		}
	}
	got = true;
	old = n->file;
	if (old) {
		name_unlink_file(n);
		if (!old->names) {
			log_msg(LOG_DEBUG, "cache: %s/%s: version %s replaced by %s", category,
				path, old->hex, f->hex);
			own_old = cache_file_detach_locked(c, old, trash);
		}
	}
	n->file = f;
	n->fnext = f->names;
	f->names = n;
	pthread_mutex_lock(&f->lock);
	ret = cache_snap_take(f, true, &s);
	pthread_mutex_unlock(&f->lock);
	pthread_mutex_unlock(&c->lock);
	locked = false;
	if (ret == 0) {
		struct cat_local row = {
			.category = category,
			.path = path,
			.has_version = true,
			.hash = *hash,
			.size = size,
			.present = s.present,
			.present_len = s.present_len,
			.chunks = s.chunks,
			.n_chunks = s.chunks ? f->nchunks : 0,
			.cached_bytes = s.cached_bytes,
			.synced_at = s.synced_at,
			.last_access = s.last_access,
		};

		ret = catalog_local_put(c->cat, &row);
	}
out:
	if (locked)
		pthread_mutex_unlock(&c->lock);
	if (plocked)
		pthread_mutex_unlock(&c->persist_lock);
	cache_trash_unlink(c, trash);
	if (own_old)
		cache_file_free(old);
	if (got && ret) {
		/* Memory stays as it is (the name holds @f); the catalog then lacks the row, so a
		 * restart drops the file as unrecorded: nothing is ever trusted that was not. */
		log_msg(LOG_ERR, "cache: %s/%s: cannot record version %s: %s", category, path,
			f->hex, strerror(-ret));
		cache_file_put(f);
	} else if (got) {
		*out = f;
	}
	cache_snap_free(&s);
	cache_name_free(fresh_name);
	cache_file_free(fresh_file);
	return ret;
}

void cache_file_put(struct cache_file *f)
{
	struct cache *c;
	bool write_access = false, free_it = false;
	int64_t when = 0;
	int fd = -1;

	if (!f)
		return;
	c = f->c;
	pthread_mutex_lock(&c->lock);
	if (f->refs == 1 && f->access_dirty && !f->detached) {
		when = f->last_access;
		f->access_dirty = false;
		write_access = true;
	}
	pthread_mutex_unlock(&c->lock);
	/* Still holding our reference, so @f cannot go away meanwhile. last_access only moves
	 * forward in the catalog, so this write needs no ordering with the others. */
	if (write_access && catalog_local_touch(c->cat, &f->hash, when) != 0)
		log_msg(LOG_WARNING, "cache: %s: last access not recorded", f->hex);

	pthread_mutex_lock(&c->lock);
	if (--f->refs == 0) {
		fd = f->fd;
		f->fd = -1;
		if (f->detached) {
			pthread_mutex_lock(&f->lock);
			c->used = cache_sub_clamp(c->used, f->cached_bytes);
			pthread_mutex_unlock(&f->lock);
			free_it = true;
		}
	}
	pthread_mutex_unlock(&c->lock);
	if (fd >= 0)
		close(fd); /* the last close of a detached version frees its blocks: no lock held */
	if (free_it)
		cache_file_free(f);
}

const struct hash128 *cache_file_hash(const struct cache_file *f)
{
	return &f->hash;
}

uint64_t cache_file_size(const struct cache_file *f)
{
	return f->size;
}

size_t cache_file_nchunks(const struct cache_file *f)
{
	return f->nchunks;
}

int cache_file_fd(const struct cache_file *f)
{
	return f->fd;
}

int cache_store_chunks(struct cache_file *f, const struct hash128 *chunks, size_t n, bool force)
{
	struct cache *c;
	struct hash128 *copy = NULL;
	struct cache_snap s = { 0 };
	bool changed = false, cleared = false;
	int ret = -EINVAL;

	if (!f || n != f->nchunks || (n && !chunks))
		goto out;
	c = f->c;
	ret = -ENOMEM;
	copy = malloc(n * sizeof(*copy) + 1);
	if (!copy)
		goto out;
	if (n)
		memcpy(copy, chunks, n * sizeof(*copy));

	pthread_mutex_lock(&c->persist_lock);
	pthread_mutex_lock(&c->lock);
	pthread_mutex_lock(&f->lock);
	ret = 0;
	if (f->chunks && memcmp(f->chunks, copy, n * sizeof(*copy)) == 0) {
		/* already known */
	} else if (f->chunks && f->complete && !force) {
		/* The content is verified against the whole hash: the new list is the wrong one. */
		log_msg(LOG_ERR, "cache: %s: chunk hashes differ from the verified copy's", f->hex);
		ret = -EINVAL;
	} else {
		if (f->chunks && !f->complete) {
			/* Present bits were checked against the old list; one list is wrong. */
			log_msg(LOG_WARNING, "cache: %s: chunk hashes changed, chunks dropped",
				f->hex);
			memset(f->present, 0, cache_bitmap_len(f->nchunks));
			c->used = cache_sub_clamp(c->used, f->cached_bytes);
			f->cached_bytes = 0;
			cleared = true;
		}
		free(f->chunks);
		f->chunks = copy;
		copy = NULL;
		changed = true;
		if (cache_snap_take(f, false, &s) != 0)
			cleared = false; /* the bits then stay recorded; finish still checks */
	}
	pthread_mutex_unlock(&f->lock);
	pthread_mutex_unlock(&c->lock);
	if (changed && !f->detached) {
		/* f->detached only changes with persist_lock held: stable here. */
		ret = catalog_local_set_chunks(c->cat, &f->hash, chunks, n);
		if (ret == 0 && cleared)
			ret = cache_persist_present(c, f, &s, NULL);
	}
	pthread_mutex_unlock(&c->persist_lock);
out:
	cache_snap_free(&s);
	free(copy);
	return ret;
}

int cache_file_set_chunks(struct cache_file *f, const struct hash128 *chunks, size_t n)
{
	return cache_store_chunks(f, chunks, n, false);
}

int cache_file_chunk_hash(struct cache_file *f, size_t idx, struct hash128 *out)
{
	int ret = -EINVAL;

	if (!f || !out || idx >= f->nchunks)
		goto out;
	pthread_mutex_lock(&f->lock);
	if (f->chunks) {
		*out = f->chunks[idx];
		ret = 0;
	} else {
		ret = -ENOENT;
	}
	pthread_mutex_unlock(&f->lock);
out:
	return ret;
}

bool cache_file_chunk_present(struct cache_file *f, size_t idx)
{
	bool present;

	if (!f || idx >= f->nchunks)
		return false;
	pthread_mutex_lock(&f->lock);
	present = cache_bit_get(f->present, idx);
	pthread_mutex_unlock(&f->lock);
	return present;
}

bool cache_file_range_present(struct cache_file *f, uint64_t off, uint64_t len)
{
	uint64_t end;
	bool present = true;

	if (!f)
		return false;
	if (off >= f->size || len == 0)
		return true; /* nothing of the file lies there */
	end = len > f->size - off ? f->size : off + len;
	pthread_mutex_lock(&f->lock);
	for (uint64_t i = off / HASH_CHUNK_SIZE; i <= (end - 1) / HASH_CHUNK_SIZE; i++) {
		if (!cache_bit_get(f->present, (size_t)i)) {
			present = false;
			break;
		}
	}
	pthread_mutex_unlock(&f->lock);
	return present;
}

int cache_file_write_chunk(struct cache_file *f, size_t idx, const void *buf, size_t len)
{
	int ret;

	if (!f || idx >= f->nchunks || len != cache_chunk_len(f, idx) || (!buf && len))
		return -EINVAL;
	ret = pwrite_full(f->fd, buf, len, (uint64_t)idx * HASH_CHUNK_SIZE);
	if (ret) {
		log_msg(LOG_ERR, "cache: %s: write chunk %zu: %s", f->hex, idx, strerror(-ret));
		return ret;
	}
	return cache_file_commit_chunk(f, idx, len);
}

int cache_file_commit_chunk(struct cache_file *f, size_t idx, size_t len)
{
	struct cache *c;
	struct cache_snap s = { 0 };
	int ret = -EINVAL;

	if (!f || idx >= f->nchunks || len != cache_chunk_len(f, idx))
		goto out;
	c = f->c;
	pthread_mutex_lock(&c->persist_lock);
	pthread_mutex_lock(&c->lock);
	pthread_mutex_lock(&f->lock);
	if (!cache_bit_get(f->present, idx)) {
		cache_bit_set(f->present, idx);
		f->cached_bytes += len;
		c->used += len;
	}
	c->reserved = cache_sub_clamp(c->reserved, len);
	ret = cache_snap_take(f, false, &s);
	pthread_mutex_unlock(&f->lock);
	pthread_mutex_unlock(&c->lock);
	/* A chunk that is on disk but not recorded is only fetched again after a restart, so a
	 * failure to record it is logged, not returned: the data is good and usable now. */
	if (ret == 0)
		cache_persist_present(c, f, &s, NULL);
	ret = 0;
	pthread_mutex_unlock(&c->persist_lock);
out:
	cache_snap_free(&s);
	return ret;
}

int cache_file_finish(struct cache_file *f)
{
	struct cache *c;
	struct hash128 whole;
	struct cache_snap s = { 0 };
	char msg[160], want_s[HASH_STR_LEN], got_s[HASH_STR_LEN];
	uint64_t size = 0;
	bool complete, ready, ok;
	int ret = -EINVAL;

	if (!f)
		goto out;
	c = f->c;
	pthread_mutex_lock(&f->lock);
	complete = f->complete;
	ready = cache_all_present(f);
	pthread_mutex_unlock(&f->lock);
	if (complete) {
		ret = 0;
		goto out;
	}
	if (!ready) {
		ret = -EAGAIN;
		goto out;
	}

	/* Durable before it is called complete: complete copies are not re-read at start. */
	if (fdatasync(f->fd) < 0) {
		ret = -errno;
		log_msg(LOG_ERR, "cache: %s: fdatasync: %s", f->hex, strerror(-ret));
		goto out;
	}
	ret = hash_fd(f->fd, &whole, &size, NULL, NULL);
	if (ret) {
		log_msg(LOG_ERR, "cache: %s: read back: %s", f->hex, strerror(-ret));
		goto out;
	}
	ok = size == f->size && hash_equal(&whole, &f->hash);
	hash_format(&f->hash, want_s);
	hash_format(&whole, got_s);
	snprintf(msg, sizeof(msg), "cached copy failed verification: expected %s, read %s",
		 want_s, got_s);

	pthread_mutex_lock(&c->persist_lock);
	pthread_mutex_lock(&c->lock);
	pthread_mutex_lock(&f->lock);
	if (ok && !cache_all_present(f)) {
		ret = -EAGAIN; /* a check dropped a chunk meanwhile */
	} else if (ok) {
		f->complete = true;
		f->synced_at = now_s();
		for (struct cache_name *n = f->names; n; n = n->fnext) {
			free(n->last_error);
			n->last_error = NULL;
		}
	} else {
		memset(f->present, 0, cache_bitmap_len(f->nchunks));
		c->used = cache_sub_clamp(c->used, f->cached_bytes);
		f->cached_bytes = 0;
		for (struct cache_name *n = f->names; n; n = n->fnext) {
			free(n->last_error);
			n->last_error = strdup(msg); /* NULL on ENOMEM: then only the row has it */
		}
		ret = -EBADMSG;
	}
	if (ret != -EAGAIN && cache_snap_take(f, false, &s) != 0)
		s.detached = true; /* out of memory: nothing recorded, memory is still right */
	pthread_mutex_unlock(&f->lock);
	pthread_mutex_unlock(&c->lock);
	if (ret != -EAGAIN && s.present)
		cache_persist_present(c, f, &s, ok ? "" : msg);
	pthread_mutex_unlock(&c->persist_lock);
	if (ret == -EBADMSG)
		log_msg(LOG_WARNING, "cache: %s: %s; every chunk dropped", f->hex, msg);
out:
	cache_snap_free(&s);
	return ret;
}

bool cache_file_complete(struct cache_file *f)
{
	bool complete;

	if (!f)
		return false;
	pthread_mutex_lock(&f->lock);
	complete = f->complete;
	pthread_mutex_unlock(&f->lock);
	return complete;
}

uint64_t cache_file_cached_bytes(struct cache_file *f)
{
	uint64_t bytes;

	if (!f)
		return 0;
	pthread_mutex_lock(&f->lock);
	bytes = f->cached_bytes;
	pthread_mutex_unlock(&f->lock);
	return bytes;
}

void cache_file_touch(struct cache_file *f)
{
	struct cache *c;

	if (!f)
		return;
	c = f->c;
	pthread_mutex_lock(&c->lock);
	f->last_access = now_s();
	f->access_dirty = true;
	if (!f->detached) {
		lru_unlink(c, f);
		cache_lru_append(c, f);
	}
	pthread_mutex_unlock(&c->lock);
}

/* ---- names: errors, lookups, pins ---- */

void cache_set_error(struct cache *c, const char *category, const char *path, const char *msg)
{
	struct cache_name *n, *fresh = NULL;
	bool set = msg && *msg;
	char *copy = NULL;
	int ret = -EINVAL;

	if (!c || !valid_file_key(category, path))
		goto out;
	ret = -ENOMEM;
	fresh = cache_name_new(category, path);
	if (set)
		copy = strdup(msg);
	if (!fresh || (set && !copy))
		goto out;

	pthread_mutex_lock(&c->persist_lock);
	pthread_mutex_lock(&c->lock);
	n = names_find(c, category, path, strlen(path));
	ret = 0;
	if (!n && set) {
		ret = cache_names_insert(c, fresh);
		if (ret == 0) {
			n = fresh;
			fresh = NULL;
		}
	}
	if (n) {
		free(n->last_error);
		n->last_error = copy;
		copy = NULL;
		name_release_locked(c, n);
	}
	pthread_mutex_unlock(&c->lock);
	if (ret == 0)
		ret = catalog_local_set_error(c->cat, category, path, msg);
	pthread_mutex_unlock(&c->persist_lock);
out:
	if (ret)
		log_msg(LOG_WARNING, "cache: %s/%s: last error not recorded: %s",
			category ? category : "?", path ? path : "?", strerror(-ret));
	free(copy);
	cache_name_free(fresh);
}

int cache_lookup(struct cache *c, const char *category, const char *path, struct cache_info *info)
{
	struct cache_name *n;
	struct cache_file *f;

	if (!c || !category || !path || !info)
		return -EINVAL;
	memset(info, 0, sizeof(*info));
	info->state = CACHE_NONE;
	pthread_mutex_lock(&c->lock);
	info->pinned = pin_covers_locked(c, category, path);
	n = names_find(c, category, path, strlen(path));
	if (n && n->last_error)
		snprintf(info->last_error, sizeof(info->last_error), "%s", n->last_error);
	f = n ? n->file : NULL;
	if (f) {
		info->hash = f->hash;
		info->size = f->size;
		pthread_mutex_lock(&f->lock);
		info->cached_bytes = f->cached_bytes;
		if (f->complete) {
			info->state = CACHE_COMPLETE;
			info->synced_at = f->synced_at;
		} else if (f->cached_bytes) {
			info->state = CACHE_PARTIAL;
		}
		pthread_mutex_unlock(&f->lock);
	}
	pthread_mutex_unlock(&c->lock);
	return 0;
}

int cache_set_pin(struct cache *c, const char *category, const char *path, bool pinned)
{
	struct cache_name *n, *fresh = NULL;
	int ret = -EINVAL;

	if (!c || !cache_valid_pin_key(category, path))
		goto out;
	ret = -ENOMEM;
	fresh = cache_name_new(category, path);
	if (!fresh)
		goto out;

	pthread_mutex_lock(&c->persist_lock);
	ret = catalog_set_pin(c->cat, category, path, pinned);
	if (ret)
		goto unlock;
	pthread_mutex_lock(&c->lock);
	n = names_find(c, category, path, strlen(path));
	if (pinned && !n) {
		fresh->pinned = true;
		ret = cache_names_insert(c, fresh);
		if (ret == 0)
			fresh = NULL;
	} else if (n && n->pinned != pinned) {
		n->pinned = pinned;
		if (pinned)
			c->n_pins++;
		else
			c->n_pins--;
		name_release_locked(c, n);
	}
	pthread_mutex_unlock(&c->lock);
	/* Unpinning leaves the row; drop it when it records nothing else. */
	if (ret == 0 && !pinned)
		ret = catalog_local_prune(c->cat, category, path);
unlock:
	pthread_mutex_unlock(&c->persist_lock);
out:
	cache_name_free(fresh);
	return ret;
}

/* ---- space ---- */

/* The cache filesystem's free space and the floor min_free puts under it. */
struct disk {
	bool limited;		/* min_free is set */
	uint64_t avail;		/* f_bavail * f_frsize */
	uint64_t floor;		/* min_free in bytes */
};

static int disk_read(struct cache *c, struct disk *d)
{
	struct statvfs sv;

	memset(d, 0, sizeof(*d));
	if (c->min_free_pct <= 0 && c->min_free_bytes == 0)
		return 0;
	if (fstatvfs(c->dir_fd, &sv) < 0) {
		int ret = -errno;

		log_msg(LOG_ERR, "cache: statvfs %s: %s", c->dir, strerror(-ret));
		return ret;
	}
	d->limited = true;
	d->avail = (uint64_t)sv.f_bavail * sv.f_frsize;
	if (c->min_free_pct > 0)
		d->floor = (uint64_t)((double)sv.f_blocks * sv.f_frsize * c->min_free_pct / 100.0);
	else
		d->floor = c->min_free_bytes;
	return 0;
}

/* Would @bytes more fit with @used bytes in cache files and @freed more free on disk? */
static bool fits_locked(struct cache *c, uint64_t bytes, const struct disk *d, uint64_t used,
			uint64_t freed)
{
	uint64_t want = add_sat(c->reserved, bytes);

	if (c->max_size && add_sat(used, want) > c->max_size)
		return false;
	if (d->limited && add_sat(d->avail, freed) < add_sat(d->floor, want))
		return false;
	return true;
}

/* Can @f be evicted to make room (complete ones only when @complete_only)? c->lock held. */
static bool evictable_locked(struct cache *c, struct cache_file *f, bool complete_only,
			     uint64_t *bytes)
{
	bool complete;

	if (f->refs)
		return false;
	pthread_mutex_lock(&f->lock);
	complete = f->complete;
	*bytes = f->cached_bytes;
	pthread_mutex_unlock(&f->lock);
	if (*bytes == 0)
		return false; /* evicting it would free nothing */
	if (complete_only && !complete)
		return false;
	return !file_pinned_locked(c, f);
}

/* The next version to evict: least recently used complete one, else partial one. */
static struct cache_file *victim_locked(struct cache *c)
{
	uint64_t bytes;

	for (int pass = 0; pass < 2; pass++) {
		for (struct cache_file *f = c->lru_head; f; f = f->lru_next) {
			if (evictable_locked(c, f, pass == 0, &bytes))
				return f;
		}
	}
	return NULL;
}

/* Bytes eviction could free now. c->lock held. */
static uint64_t evictable_total_locked(struct cache *c)
{
	uint64_t total = 0, b;

	for (struct cache_file *f = c->lru_head; f; f = f->lru_next)
		if (evictable_locked(c, f, false, &b))
			total = add_sat(total, b);
	return total;
}

int cache_reserve(struct cache *c, uint64_t bytes)
{
	struct disk d;
	uint64_t freed = 0, evictable = 0, b;
	int ret;

	if (!c)
		return -EINVAL;
	if (bytes == 0)
		return 0;
	ret = disk_read(c, &d);
	if (ret)
		return ret;
	pthread_mutex_lock(&c->lock);
	if (fits_locked(c, bytes, &d, c->used, 0)) {
		c->reserved += bytes;
		pthread_mutex_unlock(&c->lock);
		return 0;
	}
	pthread_mutex_unlock(&c->lock);

	/* Evicting: persist_lock first, as the catalog rows of the victims go too. */
	pthread_mutex_lock(&c->persist_lock);
	pthread_mutex_lock(&c->lock);
	evictable = evictable_total_locked(c);
	if (!fits_locked(c, bytes, &d, cache_sub_clamp(c->used, evictable), evictable)) {
		log_msg(LOG_INFO, "cache: no room for %llu bytes even after evicting %llu",
			(unsigned long long)bytes, (unsigned long long)evictable);
		ret = -ENOSPC;
		goto unlock;
	}
	while (!fits_locked(c, bytes, &d, c->used, freed)) {
		struct cache_file *v = victim_locked(c);
		char trash[CACHE_TRASH_NAME_MAX];

		if (!v) {
			ret = -ENOSPC; /* what was evictable got opened or pinned meanwhile */
			goto unlock;
		}
		pthread_mutex_lock(&v->lock);
		b = v->cached_bytes;
		pthread_mutex_unlock(&v->lock);
		freed += b;
		if (!cache_file_detach_locked(c, v, trash))
			continue; /* cannot happen: refs was 0 under the same lock */
		pthread_mutex_unlock(&c->lock);
		if (catalog_local_drop(c->cat, &v->hash, NULL, NULL) != 0)
			log_msg(LOG_WARNING, "cache: %s: evicted but still recorded; dropped at "
				"the next start", v->hex);
		cache_trash_unlink(c, trash);
		log_msg(LOG_INFO, "cache: evicted %s (%llu bytes)", v->hex, (unsigned long long)b);
		cache_file_free(v);
		pthread_mutex_lock(&c->lock);
	}
	c->reserved += bytes;
	ret = 0;
unlock:
	pthread_mutex_unlock(&c->lock);
	pthread_mutex_unlock(&c->persist_lock);
	return ret;
}

void cache_release(struct cache *c, uint64_t bytes)
{
	if (!c)
		return;
	pthread_mutex_lock(&c->lock);
	c->reserved = cache_sub_clamp(c->reserved, bytes);
	pthread_mutex_unlock(&c->lock);
}

/*
 * Drops the copy of (category, path) only: another path holding the same content keeps it
 * (the version's file goes with its last name). A pin or last error of the path stays.
 */
int cache_evict(struct cache *c, const char *category, const char *path)
{
	struct cache_name *n;
	struct cache_file *f;
	char trash[CACHE_TRASH_NAME_MAX] = "";
	bool own = false;
	int ret = -EINVAL;

	if (!c || !valid_file_key(category, path))
		goto out;
	pthread_mutex_lock(&c->persist_lock);
	pthread_mutex_lock(&c->lock);
	n = names_find(c, category, path, strlen(path));
	f = n ? n->file : NULL;
	if (!f) {
		ret = -ENOENT;
	} else if (f->refs) {
		ret = -EBUSY;
	} else {
		name_unlink_file(n);
		name_release_locked(c, n);
		if (!f->names)
			own = cache_file_detach_locked(c, f, trash);
		ret = 0;
	}
	pthread_mutex_unlock(&c->lock);
	if (ret == 0 && catalog_local_drop(c->cat, NULL, category, path) != 0)
		log_msg(LOG_WARNING, "cache: %s/%s: evicted but still recorded; dropped at the "
			"next start", category, path);
	pthread_mutex_unlock(&c->persist_lock);
	cache_trash_unlink(c, trash);
	if (own) {
		log_msg(LOG_INFO, "cache: %s/%s: evicted %s", category, path, f->hex);
		cache_file_free(f);
	}
out:
	return ret;
}

void cache_usage(struct cache *c, uint64_t *used, uint64_t *max)
{
	pthread_mutex_lock(&c->lock);
	if (used)
		*used = c->used;
	if (max)
		*max = c->max_size;
	pthread_mutex_unlock(&c->lock);
}

uint64_t cache_room(struct cache *c)
{
	uint64_t room = UINT64_MAX, evictable;
	struct statvfs sv;
	struct disk d;

	if (disk_read(c, &d) < 0)
		return 0;
	if (!d.limited && fstatvfs(c->dir_fd, &sv) == 0)
		room = (uint64_t)sv.f_bavail * sv.f_frsize;
	pthread_mutex_lock(&c->lock);
	evictable = evictable_total_locked(c);
	if (c->max_size) {
		uint64_t in_use = cache_sub_clamp(add_sat(c->used, c->reserved), evictable);

		room = c->max_size > in_use ? c->max_size - in_use : 0;
	}
	if (d.limited) {
		uint64_t have = add_sat(d.avail, evictable), want = add_sat(d.floor, c->reserved);
		uint64_t disk_room = have > want ? have - want : 0;

		room = disk_room < room ? disk_room : room;
	}
	pthread_mutex_unlock(&c->lock);
	return room;
}

/* ---- open and close ---- */

static void cache_free(struct cache *c)
{
	if (!c)
		return;
	for (size_t b = 0; b < c->files_cap; b++) {
		struct cache_file *f = c->files[b];

		while (f) {
			struct cache_file *next = f->hnext;

			cache_file_free(f);
			f = next;
		}
	}
	for (size_t b = 0; b < c->names_cap; b++) {
		struct cache_name *n = c->names[b];

		while (n) {
			struct cache_name *next = n->hnext;

			cache_name_free(n);
			n = next;
		}
	}
	free(c->files);
	free(c->names);
	if (c->dir_fd >= 0)
		close(c->dir_fd);
	pthread_mutex_destroy(&c->lock);
	pthread_mutex_destroy(&c->persist_lock);
	free(c->dir);
	free(c);
}

int cache_open(const struct mfs_config *cfg, struct catalog *cat, struct cache **out)
{
	struct cache *c = NULL;
	int ret = -EINVAL;

	if (!cfg || !cfg->state_dir || !cat || !out)
		goto out;
	ret = -ENOMEM;
	c = calloc(1, sizeof(*c));
	if (!c)
		goto out;
	c->dir_fd = -1;
	if (pthread_mutex_init(&c->lock, NULL) != 0) {
		free(c);
		c = NULL;
		goto out;
	}
	if (pthread_mutex_init(&c->persist_lock, NULL) != 0) {
		pthread_mutex_destroy(&c->lock);
		free(c);
		c = NULL;
		goto out;
	}
	c->cat = cat;
	c->max_size = cfg->cache_max_size;
	c->min_free_pct = cfg->cache_min_free_pct;
	c->min_free_bytes = cfg->cache_min_free_bytes;
	c->dir = path_join(cfg->state_dir, CACHE_SUBDIR);
	if (!c->dir)
		goto out;
	ret = mkdir_p(c->dir, 0700);
	if (ret) {
		log_msg(LOG_ERR, "cache: mkdir %s: %s", c->dir, strerror(-ret));
		goto out;
	}
	c->dir_fd = open(c->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (c->dir_fd < 0) {
		ret = -errno;
		log_msg(LOG_ERR, "cache: open %s: %s", c->dir, strerror(-ret));
		goto out;
	}
	ret = cache_load(c);
	if (ret)
		goto out;
	log_msg(LOG_DEBUG, "cache: %s: %zu versions, %llu bytes", c->dir, c->n_files,
		(unsigned long long)c->used);
	*out = c;
	c = NULL;
out:
	cache_free(c);
	return ret;
}

void cache_close(struct cache *c)
{
	if (!c)
		return;
	for (struct cache_file *f = c->lru_head; f; f = f->lru_next) {
		if (f->refs)
			log_msg(LOG_WARNING, "cache: %s still has %u handles at close", f->hex,
				f->refs);
		if (f->access_dirty)
			catalog_local_touch(c->cat, &f->hash, f->last_access);
	}
	/* Partial copies written since open are durable now, so the next start need not
	 * re-read them whatever happens to this kernel. */
	if (syncfs(c->dir_fd) == 0)
		catalog_meta_set_durable(c->cat, CACHE_SESSION_KEY, CACHE_SESSION_CLEAN);
	else
		log_msg(LOG_ERR, "cache: syncfs %s: %s", c->dir, strerror(errno));
	cache_free(c);
}
