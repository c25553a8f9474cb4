/*
 * xattrs — the user.meshfs.* extended attributes (INTERFACE.md, "Extended attributes").
 *
 * Every value is computed on each call from a snapshot of the node (ns_info) and, for the
 * mount root, from the status module; nothing is stored. Which names a node has depends on its
 * kind: files have state, origin, sources, hash, cached_bytes, age, synced_at and last_error;
 * directories have age; the mount root also has health and lag. Other kinds (symlinks, ...)
 * have none. The writable names (prefetch, pin, evict) are commands, not attributes: they are
 * never listed and cannot be read.
 *
 * Errors: a name outside user.meshfs.*, an unknown one, or one that does not apply to the node
 * reads as -ENODATA. Setting a readable name gives -EPERM, setting anything else that is not
 * one of the three commands -ENOTSUP, and a bad value -EINVAL.
 *
 * Values:
 *   state       local / passthrough for this node's data; for another host's version, from
 *               the cache and the fetcher: cached (complete and verified), fetching, partial,
 *               stale (the cache holds an older version), error (the last fetch failed and
 *               nothing is here), remote (nothing here);
 *   hash        "" while the file is not published yet (no version exists to name);
 *   sources     the hosts whose manifest lists these very bytes, in config order;
 *   age         files: now - confirmed_at (0 before the first publication); dirs: seconds since
 *               the indexer's last full scan (since the daemon started, before the first);
 *   synced_at   when the cached copy was completed ("" if not, and for local data);
 *   last_error  the last fetch error of the file ("" if none).
 */
#include "sync/xattrs.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "sync/cache.h"
#include "sync/catalog.h"
#include "sync/config.h"
#include "sync/daemon.h"
#include "sync/fetch.h"
#include "sync/hash.h"
#include "sync/indexer.h"
#include "sync/log.h"
#include "sync/namespace.h"
#include "sync/status.h"
#include "sync/util.h"

#define XA_PREFIX "user.meshfs."
#define XA_PREFIX_LEN (sizeof(XA_PREFIX) - 1)

enum {
	XA_FILE = 1 << 0,
	XA_DIR = 1 << 1,
	XA_ROOT = 1 << 2,
};

/* The readable names, in listing order, and the node kinds they apply to. */
static const struct {
	const char *name;
	unsigned on;
} xa_names[] = {
	{ "state", XA_FILE },
	{ "origin", XA_FILE },
	{ "sources", XA_FILE },
	{ "hash", XA_FILE },
	{ "cached_bytes", XA_FILE },
	{ "age", XA_FILE | XA_DIR | XA_ROOT },
	{ "synced_at", XA_FILE },
	{ "last_error", XA_FILE },
	{ "health", XA_ROOT },
	{ "lag", XA_ROOT },
};

static unsigned node_kind(const struct ns_info *info)
{
	if (info->is_file)
		return XA_FILE;
	if (info->is_dir)
		return info->is_root ? XA_DIR | XA_ROOT : XA_DIR;
	return 0;
}

/* The bare name after "user.meshfs.", or NULL for a name that is not ours. */
static const char *our_key(const char *name)
{
	if (strncmp(name, XA_PREFIX, XA_PREFIX_LEN) != 0)
		return NULL;
	return name + XA_PREFIX_LEN;
}

/* Index of @key in xa_names, or -1. */
static int find_readable(const char *key)
{
	for (size_t i = 0; i < ARRAY_SIZE(xa_names); i++) {
		if (strcmp(xa_names[i].name, key) == 0)
			return (int)i;
	}
	return -1;
}

static const char *state_name(enum ns_state st)
{
	switch (st) {
	case NS_STATE_LOCAL:
		return "local";
	case NS_STATE_PASSTHROUGH:
		return "passthrough";
	case NS_STATE_REMOTE:
		return "remote";
	}
	return "error";
}

/* Data of this node itself (its own or on shared storage), as opposed to a peer's. */
static bool is_here(const struct ns_info *info)
{
	return info->state == NS_STATE_LOCAL || info->state == NS_STATE_PASSTHROUGH;
}

/* The host that produced the version; a file written here and not yet published is ours. */
static const char *origin_of(struct daemon *d, const struct ns_info *info)
{
	if (info->origin[0])
		return info->origin;
	return is_here(info) ? d->cfg->node : "";
}

/* What the cache holds of a remote file's (category, path); CACHE_NONE if nothing. */
static void cached_of(struct daemon *d, const struct ns_info *info, struct cache_info *ci)
{
	memset(ci, 0, sizeof(*ci));
	if (d->cache && info->cat_idx >= 0)
		cache_lookup(d->cache, d->cfg->categories[info->cat_idx].name, info->path, ci);
}

/* The state name of a file that is another host's version. */
static const char *remote_state(struct daemon *d, const struct ns_info *info)
{
	struct cache_info ci;
	bool same;

	cached_of(d, info, &ci);
	same = ci.state != CACHE_NONE && hash_equal(&ci.hash, &info->hash);
	if (same && ci.state == CACHE_COMPLETE)
		return "cached";
	if (d->fetch && fetch_busy(d->fetch, &info->hash))
		return "fetching";
	if (same)
		return "partial";
	if (ci.state != CACHE_NONE)
		return "stale";
	if (ci.last_error[0])
		return "error";
	return "remote";
}

/* "a,b,c": the hosts in @mask, in config order. */
static int sources_of(struct daemon *d, const struct ns_info *info, char **out)
{
	size_t cap = 1, len = 0;
	char *buf;

	for (size_t h = 0; h < d->cfg->n_hosts && h < 64; h++)
		if (info->sources & ((uint64_t)1 << h))
			cap += strlen(d->cfg->hosts[h].name) + 1;
	buf = malloc(cap);
	if (!buf)
		return -ENOMEM;
	buf[0] = '\0';
	for (size_t h = 0; h < d->cfg->n_hosts && h < 64; h++)
		if (info->sources & ((uint64_t)1 << h))
			len += (size_t)sprintf(buf + len, "%s%s", len ? "," : "",
					       d->cfg->hosts[h].name);
	*out = buf;
	return 0;
}

static int64_t dir_age(struct daemon *d, int64_t now)
{
	struct indexer_stats st = { 0 };
	int64_t since;

	if (d->indexer)
		indexer_get_stats(d->indexer, &st);
	since = st.last_scan_done > 0 ? st.last_scan_done : d->started_at;
	return now > since ? now - since : 0;
}

static int64_t file_age(const struct ns_info *info, int64_t now)
{
	if (!info->published || info->confirmed_at <= 0)
		return 0;
	return now > info->confirmed_at ? now - info->confirmed_at : 0;
}

static int dup_int(int64_t v, char **out)
{
	return asprintf(out, "%" PRId64, v) < 0 ? -ENOMEM : 0;
}

static int dup_str(const char *s, char **out)
{
	*out = strdup(s);
	return *out ? 0 : -ENOMEM;
}

/* Computes the value of readable @key for @info into a new string. */
static int value_of(struct daemon *d, uint64_t ino, const struct ns_info *info, const char *key,
		    char **out)
{
	int64_t now = now_s();
	char hash[HASH_STR_LEN];
	json_t *health;
	int ret;

	if (strcmp(key, "state") == 0) {
		ret = dup_str(is_here(info) ? state_name(info->state) : remote_state(d, info), out);
	} else if (strcmp(key, "origin") == 0) {
		ret = dup_str(origin_of(d, info), out);
	} else if (strcmp(key, "sources") == 0) {
		ret = info->sources ? sources_of(d, info, out) : dup_str(origin_of(d, info), out);
	} else if (strcmp(key, "hash") == 0) {
		hash[0] = '\0';
		if (info->published)
			hash_format(&info->hash, hash);
		ret = dup_str(hash, out);
	} else if (strcmp(key, "cached_bytes") == 0) {
		struct stat st;

		/* Data of this node is all here, published or still being written: its size
		 * is the backing file's, not the last published one's. */
		if (is_here(info) && ns_getattr(d->ns, ino, &st) == 0) {
			ret = dup_int((int64_t)st.st_size, out);
		} else if (is_here(info)) {
			ret = dup_int((int64_t)info->size, out);
		} else {
			struct cache_info ci;

			cached_of(d, info, &ci);
			ret = dup_int(hash_equal(&ci.hash, &info->hash) ?
					      (int64_t)ci.cached_bytes : 0, out);
		}
	} else if (strcmp(key, "age") == 0) {
		ret = dup_int(info->is_dir ? dir_age(d, now) : file_age(info, now), out);
	} else if (strcmp(key, "synced_at") == 0) {
		struct cache_info ci;

		cached_of(d, info, &ci);
		if (!is_here(info) && ci.state == CACHE_COMPLETE &&
		    hash_equal(&ci.hash, &info->hash) && ci.synced_at > 0)
			ret = dup_int(ci.synced_at, out);
		else
			ret = dup_str("", out);
	} else if (strcmp(key, "last_error") == 0) {
		struct cache_info ci;

		cached_of(d, info, &ci);
		ret = dup_str(is_here(info) ? "" : ci.last_error, out);
	} else if (strcmp(key, "health") == 0) {
		health = status_health(d);
		*out = health ? json_dumps(health, JSON_COMPACT) : NULL;
		json_decref(health);
		ret = *out ? 0 : -ENOMEM;
	} else if (strcmp(key, "lag") == 0) {
		ret = dup_int(status_lag(d), out);
	} else {
		ret = -ENODATA;
	}
	return ret;
}

/*
 * The value of @name on @ino as a new string in *value (not NUL-counted: its length in
 * *len). Returns 0, -ENODATA for a name that is not ours or does not apply to the node,
 * -ENOENT for an unknown inode, -ENOMEM.
 */
int xattr_get(struct daemon *d, uint64_t ino, const char *name, char **value, size_t *len)
{
	const char *key = our_key(name);
	struct ns_info *info = NULL;
	char *v = NULL;
	int idx, ret;

	if (!key) {
		ret = -ENODATA;
		goto out;
	}
	idx = find_readable(key);
	if (idx < 0) {
		ret = -ENODATA;
		goto out;
	}
	/* struct ns_info carries a PATH_MAX path: keep it off FUSE thread stacks. */
	info = malloc(sizeof(*info));
	if (!info) {
		ret = -ENOMEM;
		goto out;
	}
	ret = ns_info(d->ns, ino, info);
	if (ret < 0)
		goto out;
	if (!(xa_names[idx].on & node_kind(info))) {
		ret = -ENODATA;
		goto out;
	}
	ret = value_of(d, ino, info, key, &v);
	if (ret < 0)
		goto out;
	*len = strlen(v);
	*value = v;
	v = NULL;
out:
	free(v);
	free(info);
	return ret;
}

/*
 * The NUL-separated names that apply to @ino, in a new buffer in *names (never NULL on
 * success, even when *len is 0). Returns 0 or -errno.
 */
int xattr_list(struct daemon *d, uint64_t ino, char **names, size_t *len)
{
	struct ns_info *info = malloc(sizeof(*info));
	size_t total = 0, off = 0;
	unsigned kind;
	char *buf = NULL;
	int ret;

	if (!info) {
		ret = -ENOMEM;
		goto out;
	}
	ret = ns_info(d->ns, ino, info);
	if (ret < 0)
		goto out;
	kind = node_kind(info);
	for (size_t i = 0; i < ARRAY_SIZE(xa_names); i++) {
		if (xa_names[i].on & kind)
			total += XA_PREFIX_LEN + strlen(xa_names[i].name) + 1;
	}
	buf = malloc(total ? total : 1);
	if (!buf) {
		ret = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < ARRAY_SIZE(xa_names); i++) {
		if (!(xa_names[i].on & kind))
			continue;
		off += sprintf(buf + off, XA_PREFIX "%s", xa_names[i].name) + 1;
	}
	*names = buf;
	*len = total;
	buf = NULL;
out:
	free(buf);
	free(info);
	return ret;
}

/*
 * Copies @value into @buf (NUL-terminated) without one trailing newline (as `echo` adds) and
 * trailing NULs (as some callers count). -EINVAL when it does not fit.
 */
static int take_value(const char *value, size_t len, char *buf, size_t buflen)
{
	while (len > 0 && value[len - 1] == '\0')
		len--;
	if (len > 0 && value[len - 1] == '\n')
		len--;
	if (len >= buflen || memchr(value, '\0', len))
		return -EINVAL;
	memcpy(buf, value, len);
	buf[len] = '\0';
	return 0;
}

/* user.meshfs.pin: "1" keeps the file out of cache eviction, "0" stops that. Files only. */
static int set_pin(struct daemon *d, const struct ns_info *info, const char *v)
{
	const struct mfs_config *cfg = d->cfg;
	bool pinned;
	int ret;

	if (strcmp(v, "1") != 0 && strcmp(v, "0") != 0) {
		ret = -EINVAL;
		goto out;
	}
	pinned = v[0] == '1';
	if (!info->is_file) {
		ret = info->is_dir ? -EISDIR : -EINVAL;
		goto out;
	}
	if (info->cat_idx < 0 || (size_t)info->cat_idx >= cfg->n_categories) {
		ret = -EINVAL;
		goto out;
	}
	ret = d->cache ? cache_set_pin(d->cache, cfg->categories[info->cat_idx].name, info->path,
				       pinned)
		       : catalog_set_pin(d->catalog, cfg->categories[info->cat_idx].name,
					 info->path, pinned);
	if (ret < 0)
		log_msg(LOG_WARNING, "cannot %s %s/%s: %s", pinned ? "pin" : "unpin",
			cfg->categories[info->cat_idx].name, info->path, strerror(-ret));
out:
	return ret;
}

#define PREFETCH_MAX_DEPTH 64

struct prefetch_walk {
	struct daemon *d;
	enum fetch_priority prio;
	int depth;
	int ret;
};

/* One directory level of the walk: where its listing got to. */
struct prefetch_level {
	struct prefetch_walk *w;
	off_t last;
	int listed;
};

static int prefetch_ino(struct prefetch_walk *w, uint64_t ino);

static int prefetch_child(void *arg, const char *name, const struct stat *st, uint64_t nodeid,
			  off_t next)
{
	struct prefetch_level *lv = arg;

	lv->last = next;
	lv->listed++;
	if (nodeid && strcmp(name, ".") && strcmp(name, ".."))
		prefetch_ino(lv->w, nodeid);
	return 0;
}

/* Queues @ino, or everything below it, at w->prio. */
static int prefetch_ino(struct prefetch_walk *w, uint64_t ino)
{
	struct ns_remote *r = NULL;
	struct ns_info *info = malloc(sizeof(*info));
	bool keep;
	int fd = -1, ret;

	if (!info)
		return -ENOMEM;
	ret = ns_info(w->d->ns, ino, info);
	if (ret < 0)
		goto out;
	if (info->is_dir) {
		struct prefetch_level lv = { .w = w };

		if (w->depth >= PREFETCH_MAX_DEPTH)
			goto out;
		w->depth++;
		/* ns_readdir lists one batch per call: go on from the last cookie until a call
		 * lists nothing. */
		do {
			lv.listed = 0;
			ret = ns_readdir(w->d->ns, ino, lv.last, false, prefetch_child, &lv);
		} while (ret == 0 && lv.listed > 0);
		w->depth--;
		goto out;
	}
	if (!info->is_file || is_here(info))
		goto out; /* nothing to fetch */
	r = malloc(sizeof(*r));
	if (!r) {
		ret = -ENOMEM;
		goto out;
	}
	ret = ns_open(w->d->ns, ino, O_RDONLY, &fd, &keep, r);
	if (ret == 0) {
		close(fd); /* became local meanwhile */
	} else if (ret == -EREMOTE) {
		ret = w->d->fetch ? fetch_prefetch(w->d->fetch, r, w->prio) : -ENOTSUP;
		if (ret < 0)
			w->ret = ret;
	}
out:
	free(r);
	free(info);
	return ret;
}

/*
 * user.meshfs.prefetch: low|normal|high|critical. Queues another host's file, or every such
 * file below a directory, at that priority. Data that is here needs nothing.
 */
static int set_prefetch(struct daemon *d, uint64_t ino, const char *v)
{
	static const struct {
		const char *name;
		enum fetch_priority prio;
	} prios[] = {
		{ "low", FETCH_PRIO_LOW },
		{ "normal", FETCH_PRIO_NORMAL },
		{ "high", FETCH_PRIO_HIGH },
		{ "critical", FETCH_PRIO_CRITICAL },
	};
	struct prefetch_walk w = { .d = d };
	size_t i;

	for (i = 0; i < ARRAY_SIZE(prios); i++) {
		if (strcmp(v, prios[i].name) == 0)
			break;
	}
	if (i == ARRAY_SIZE(prios))
		return -EINVAL;
	w.prio = prios[i].prio;
	prefetch_ino(&w, ino);
	return w.ret;
}

/*
 * user.meshfs.evict: "1" drops the cached copy of another host's file (-EBUSY while it is
 * open). This node's own files and passthrough files are not copies: they are held nowhere
 * else as far as this node may assume, so -EBUSY.
 */
static int set_evict(struct daemon *d, const struct ns_info *info, const char *v)
{
	int ret;

	if (strcmp(v, "1") != 0)
		return -EINVAL;
	if (!info->is_file)
		return info->is_dir ? -EISDIR : -EINVAL;
	if (is_here(info))
		return -EBUSY;
	if (!d->cache || info->cat_idx < 0)
		return 0;
	ret = cache_evict(d->cache, d->cfg->categories[info->cat_idx].name, info->path);
	return ret == -ENOENT ? 0 : ret;
}

/*
 * Sets @name (prefetch, pin, evict) on @ino to the @len bytes at @value. Returns 0 or -errno:
 * -EINVAL for a bad value, -EPERM for a read-only user.meshfs name, -ENOTSUP for any other
 * name, -EISDIR for pin/evict on a directory, -EBUSY for evicting data held nowhere else.
 */
int xattr_set(struct daemon *d, uint64_t ino, const char *name, const char *value, size_t len)
{
	const char *key = our_key(name);
	struct ns_info *info = NULL;
	char v[16];
	int ret;

	if (!key) {
		ret = -ENOTSUP;
		goto out;
	}
	if (find_readable(key) >= 0) {
		ret = -EPERM;
		goto out;
	}
	if (strcmp(key, "pin") != 0 && strcmp(key, "prefetch") != 0 &&
	    strcmp(key, "evict") != 0) {
		ret = -ENOTSUP;
		goto out;
	}
	info = malloc(sizeof(*info));
	if (!info) {
		ret = -ENOMEM;
		goto out;
	}
	ret = ns_info(d->ns, ino, info);
	if (ret < 0)
		goto out;
	ret = take_value(value, len, v, sizeof(v));
	if (ret < 0)
		goto out;
	if (strcmp(key, "pin") == 0)
		ret = set_pin(d, info, v);
	else if (strcmp(key, "prefetch") == 0)
		ret = set_prefetch(d, ino, v);
	else
		ret = set_evict(d, info, v);
out:
	free(info);
	return ret;
}
