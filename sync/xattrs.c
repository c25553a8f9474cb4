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
 * Values today (this node is the only one with data):
 *   hash        "" while the file is not published yet (no version exists to name);
 *   age         files: now - confirmed_at (0 before the first publication); dirs: seconds since
 *               the indexer's last full scan (since the daemon started, before the first);
 *   sources     the origin (no other host holds a copy yet);
 *   synced_at   "" (nothing is fetched from peers yet), last_error "".
 */
#include "sync/xattrs.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sync/catalog.h"
#include "sync/config.h"
#include "sync/daemon.h"
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
static int value_of(struct daemon *d, const struct ns_info *info, const char *key, char **out)
{
	int64_t now = now_s();
	char hash[HASH_STR_LEN];
	json_t *health;
	int ret;

	if (strcmp(key, "state") == 0) {
		ret = dup_str(state_name(info->state), out);
	} else if (strcmp(key, "origin") == 0 || strcmp(key, "sources") == 0) {
		/* The only holder of a version today is its origin. */
		ret = dup_str(origin_of(d, info), out);
	} else if (strcmp(key, "hash") == 0) {
		hash[0] = '\0';
		if (info->published)
			hash_format(&info->hash, hash);
		ret = dup_str(hash, out);
	} else if (strcmp(key, "cached_bytes") == 0) {
		ret = dup_int(is_here(info) ? (int64_t)info->size : 0, out);
	} else if (strcmp(key, "age") == 0) {
		ret = dup_int(info->is_dir ? dir_age(d, now) : file_age(info, now), out);
	} else if (strcmp(key, "synced_at") == 0 || strcmp(key, "last_error") == 0) {
		ret = dup_str("", out);
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
	ret = value_of(d, info, key, &v);
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
	ret = catalog_set_pin(d->catalog, cfg->categories[info->cat_idx].name, info->path,
			      pinned);
	if (ret < 0)
		log_msg(LOG_WARNING, "cannot %s %s/%s: %s", pinned ? "pin" : "unpin",
			cfg->categories[info->cat_idx].name, info->path, strerror(-ret));
out:
	return ret;
}

/*
 * user.meshfs.prefetch: low|normal|high|critical. Data that is here needs no fetching, so on
 * local and passthrough files and on directories (everything under them is here in this
 * issue) a valid request succeeds at once. Queueing a remote file needs the scheduler, which
 * does not exist yet: -ENOTSUP rather than a success that fetches nothing.
 */
static int set_prefetch(const struct ns_info *info, const char *v)
{
	static const char *const prios[] = { "low", "normal", "high", "critical" };
	size_t i;

	for (i = 0; i < ARRAY_SIZE(prios); i++) {
		if (strcmp(v, prios[i]) == 0)
			break;
	}
	if (i == ARRAY_SIZE(prios))
		return -EINVAL;
	if (info->is_file && !is_here(info))
		return -ENOTSUP;
	return 0;
}

/*
 * user.meshfs.evict: "1" drops the cached copy of a file. A local file is its origin's data,
 * not a cached copy, and no other host holds it yet; a passthrough file is the shared storage
 * itself: both are refused with -EBUSY. A remote file has nothing here to drop.
 */
static int set_evict(const struct ns_info *info, const char *v)
{
	if (strcmp(v, "1") != 0)
		return -EINVAL;
	if (!info->is_file)
		return info->is_dir ? -EISDIR : -EINVAL;
	return is_here(info) ? -EBUSY : 0;
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
		ret = set_prefetch(info, v);
	else
		ret = set_evict(info, v);
out:
	free(info);
	return ret;
}
