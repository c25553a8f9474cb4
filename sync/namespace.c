/*
 * namespace — the in-memory tree behind the mount (see namespace.h for the layout).
 *
 * Nodes are kept in two chained hash tables: by inode number, and by (parent, name). A
 * directory additionally keeps its children in an array ordered by cookie; removing a child
 * leaves a hole that is compacted once holes outnumber entries, so unlinking every file of a
 * 100k-file directory stays linear and a readdir offset (the cookie) never shifts.
 *
 * A node is "attached" while it hangs in the tree. It is freed once it is detached and has no
 * references: kernel lookups (nlookup) plus the /.hosts mirror nodes that alias it (refs).
 *
 * Data of this node lives in the backing category directories; a node finds its backing path
 * by walking up to its category root. Every backing syscall is made with ns->lock released
 * (the path is copied first); the tree is updated after the syscall succeeded, so a failed
 * operation leaves the namespace as it was.
 */
#include "sync/namespace.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "sync/log.h"
#include "sync/util.h"

/* Synthetic st_ino values live above any inode number a backing ext4/xfs hands out in
 * practice, so that `du`, `tar` and `cp -a` never take two different files for hard links. */
#define NS_SYNTH_INO_BASE ((uint64_t)1 << 48)

enum ns_kind {
	NK_DIR,
	NK_FILE,
	NK_SYMLINK,
};

enum ns_area {
	NA_ROOT,	/* "/" */
	NA_UNION,	/* a category dir and everything below it */
	NA_HOSTS,	/* "/.hosts" */
	NA_HOST,	/* "/.hosts/<host>" */
	NA_MIRROR,	/* "/.hosts/<host>/<category>" and below: aliases of union nodes */
};

enum {
	NF_ATTACHED = 1 << 0,
	NF_PUBLISHED = 1 << 1,
	NF_OPENED = 1 << 2,	/* open_size/open_mtime are valid */
	NF_LAZY = 1 << 3,	/* a mirror node made by lookup, dropped at forget */
};

/* One host's entry at a path. */
struct ns_version {
	struct hash128 hash;
	uint64_t size;
	int64_t mtime_ns;
	int64_t confirmed_at;
	int16_t host;
	int16_t origin;
};

struct ns_child {
	uint32_t cookie;
	struct ns_node *node;	/* NULL: a hole left by a removal */
};

struct ns_dir {
	struct ns_child *ents;
	uint32_t n;
	uint32_t cap;
	uint32_t holes;
	uint32_t next_cookie;
	uint32_t attached;	/* children in the tree */
	uint32_t live;		/* attached + detached ones still holding this dir as parent */
};

struct ns_node {
	uint64_t ino;
	struct ns_node *parent;
	struct ns_node *ino_next;
	struct ns_node *name_next;
	char *name;
	struct ns_dir *dir;		/* directories only */
	struct ns_node *alias;		/* NA_MIRROR: the union node shown */
	uint64_t nlookup;		/* kernel references */
	uint32_t refs;			/* mirror nodes aliasing this one */
	uint32_t cookie;		/* position in parent's ns_dir */
	uint8_t kind;
	uint8_t area;
	uint8_t flags;
	int8_t cat;			/* category index, -1 outside categories */
	int16_t host;			/* NA_HOST/NA_MIRROR: host index; files: host shown */
	uint16_t open_writers;
	int16_t origin;			/* files: host that produced the version shown */
	uint16_t nvers;			/* entries in vers */
	/* The version shown (NF_PUBLISHED): the only one when vers is NULL, else the winner of
	 * vers, the versions that several hosts hold at this path. */
	struct ns_version *vers;
	uint64_t size;
	int64_t mtime_ns;
	int64_t confirmed_at;
	struct hash128 hash;
	/* What the last open saw, to decide keep_cache. */
	uint64_t open_size;
	int64_t open_mtime_ns;
};

struct ns_table {
	struct ns_node **buckets;
	size_t mask;
	size_t count;
};

struct ns {
	const struct mfs_config *cfg;
	struct ns_hooks hooks;
	void *hook_arg;
	int self_host;
	char *cat_dirs[CFG_MAX_CATEGORIES];
	bool cat_passthrough[CFG_MAX_CATEGORIES];
	int64_t created_ns;

	pthread_rwlock_t lock;
	/* Everything below is protected by lock. */
	struct ns_table by_ino;
	struct ns_table by_name;
	uint64_t next_ino;
	struct ns_node *root;
	struct ns_node *hosts_dir;
	struct ns_node *cat_roots[CFG_MAX_CATEGORIES];
	uint64_t n_nodes;
	uint64_t n_files;
	uint64_t n_bytes;
};

/* ------------------------------------------------------------------ hash tables */

static size_t name_hash(const struct ns_node *parent, const char *name)
{
	return (size_t)XXH3_64bits_withSeed(name, strlen(name), (uint64_t)(uintptr_t)parent);
}

static size_t ino_hash(uint64_t ino)
{
	return (size_t)(ino * 0x9E3779B97F4A7C15ull >> 16);
}

static int table_init(struct ns_table *t)
{
	t->mask = 1023;
	t->count = 0;
	t->buckets = calloc(t->mask + 1, sizeof(*t->buckets));
	return t->buckets ? 0 : -ENOMEM;
}

/* Doubles the bucket array when the load passes 1; keeps the old one on ENOMEM (chains just
 * get longer). */
static void table_grow(struct ns_table *t, bool by_name)
{
	size_t new_mask = t->mask * 2 + 1;
	struct ns_node **nb;

	if (t->count <= t->mask)
		return;
	nb = calloc(new_mask + 1, sizeof(*nb));
	if (!nb)
		return;
	for (size_t i = 0; i <= t->mask; i++) {
		struct ns_node *n = t->buckets[i], *next;

		for (; n; n = next) {
			size_t h;

			if (by_name) {
				next = n->name_next;
				h = name_hash(n->parent, n->name) & new_mask;
				n->name_next = nb[h];
			} else {
				next = n->ino_next;
				h = ino_hash(n->ino) & new_mask;
				n->ino_next = nb[h];
			}
			nb[h] = n;
		}
	}
	free(t->buckets);
	t->buckets = nb;
	t->mask = new_mask;
}

static void ino_insert(struct ns *ns, struct ns_node *n)
{
	size_t h = ino_hash(n->ino) & ns->by_ino.mask;

	n->ino_next = ns->by_ino.buckets[h];
	ns->by_ino.buckets[h] = n;
	ns->by_ino.count++;
	table_grow(&ns->by_ino, false);
}

static void ino_remove(struct ns *ns, struct ns_node *n)
{
	struct ns_node **pp = &ns->by_ino.buckets[ino_hash(n->ino) & ns->by_ino.mask];

	for (; *pp; pp = &(*pp)->ino_next) {
		if (*pp == n) {
			*pp = n->ino_next;
			ns->by_ino.count--;
			return;
		}
	}
}

static struct ns_node *ino_find(struct ns *ns, uint64_t ino)
{
	struct ns_node *n = ns->by_ino.buckets[ino_hash(ino) & ns->by_ino.mask];

	while (n && n->ino != ino)
		n = n->ino_next;
	return n;
}

static struct ns_node *child_find(struct ns *ns, const struct ns_node *parent, const char *name)
{
	struct ns_node *n = ns->by_name.buckets[name_hash(parent, name) & ns->by_name.mask];

	while (n && (n->parent != parent || strcmp(n->name, name) != 0))
		n = n->name_next;
	return n;
}

/* ------------------------------------------------------------------ nodes */

static struct ns_node *node_new(struct ns *ns, const char *name, enum ns_kind kind,
				enum ns_area area, int cat)
{
	struct ns_node *n = calloc(1, sizeof(*n));

	if (!n)
		return NULL;
	n->name = strdup(name);
	if (!n->name)
		goto fail;
	if (kind == NK_DIR) {
		n->dir = calloc(1, sizeof(*n->dir));
		if (!n->dir)
			goto fail;
		n->dir->next_cookie = 3; /* 1 and 2 are "." and ".." */
	}
	n->ino = ns->next_ino++;
	n->kind = kind;
	n->area = area;
	n->cat = cat;
	n->host = -1;
	n->origin = -1;
	ino_insert(ns, n);
	ns->n_nodes++;
	return n;
fail:
	free(n->name);
	free(n);
	return NULL;
}

/*
 * Frees @n, and then whatever it held, once nothing refers to it: it must be out of the tree,
 * without kernel references, aliases or live children. A detached node that still has a
 * parent pointer is counted in that parent's dir->live, which is given back here.
 */
static void node_maybe_free(struct ns *ns, struct ns_node *n)
{
	while (n) {
		struct ns_node *parent = n->parent, *alias = n->alias;

		if ((n->flags & NF_ATTACHED) || n->nlookup > 0 || n->refs > 0 || n == ns->root)
			return;
		if (n->dir && n->dir->live > 0)
			return;
		ino_remove(ns, n);
		ns->n_nodes--;
		if (n->dir)
			free(n->dir->ents);
		free(n->dir);
		free(n->vers);
		free(n->name);
		free(n);
		if (alias) {
			alias->refs--;
			node_maybe_free(ns, alias);
		}
		if (parent)
			parent->dir->live--;
		n = parent;
	}
}

static int dir_append(struct ns_dir *d, struct ns_node *child)
{
	if (d->n == d->cap) {
		uint32_t cap = d->cap ? d->cap * 2 : 4;
		struct ns_child *e = realloc(d->ents, cap * sizeof(*e));

		if (!e)
			return -ENOMEM;
		d->ents = e;
		d->cap = cap;
	}
	child->cookie = d->next_cookie++;
	d->ents[d->n].cookie = child->cookie;
	d->ents[d->n].node = child;
	d->n++;
	d->attached++;
	d->live++;
	return 0;
}

/* The index of the first child with cookie >= @cookie (binary search; cookies ascend). */
static uint32_t dir_seek(const struct ns_dir *d, uint64_t cookie)
{
	uint32_t lo = 0, hi = d->n;

	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;

		if (d->ents[mid].cookie < cookie)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static void dir_remove(struct ns_dir *d, struct ns_node *child)
{
	uint32_t i = dir_seek(d, child->cookie);

	if (i >= d->n || d->ents[i].node != child)
		return;
	d->ents[i].node = NULL;
	d->holes++;
	d->attached--;
	d->live--;
	if (d->holes > 16 && d->holes > d->n / 2) {
		uint32_t w = 0;

		for (uint32_t r = 0; r < d->n; r++)
			if (d->ents[r].node)
				d->ents[w++] = d->ents[r];
		d->n = w;
		d->holes = 0;
	}
}

/* Hangs @child under @parent. */
static int node_attach(struct ns *ns, struct ns_node *parent, struct ns_node *child)
{
	size_t h;
	int ret = dir_append(parent->dir, child);

	if (ret < 0)
		return ret;
	child->parent = parent;
	child->flags |= NF_ATTACHED;
	h = name_hash(parent, child->name) & ns->by_name.mask;
	child->name_next = ns->by_name.buckets[h];
	ns->by_name.buckets[h] = child;
	ns->by_name.count++;
	table_grow(&ns->by_name, true);
	if (child->kind == NK_FILE && (child->flags & NF_PUBLISHED) && child->area == NA_UNION) {
		ns->n_files++;
		ns->n_bytes += child->size;
	}
	return 0;
}

/* Takes @n out of the tree; it stays allocated while references remain. The parent is kept
 * (it cannot be freed while it has live children). */
static void node_detach(struct ns *ns, struct ns_node *n)
{
	struct ns_node **pp;
	struct ns_node *parent = n->parent;

	if (!(n->flags & NF_ATTACHED))
		return;
	pp = &ns->by_name.buckets[name_hash(parent, n->name) & ns->by_name.mask];
	for (; *pp; pp = &(*pp)->name_next) {
		if (*pp == n) {
			*pp = n->name_next;
			ns->by_name.count--;
			break;
		}
	}
	dir_remove(parent->dir, n);
	n->flags &= ~NF_ATTACHED;
	if (n->kind == NK_FILE && (n->flags & NF_PUBLISHED) && n->area == NA_UNION) {
		ns->n_files--;
		ns->n_bytes -= n->size;
	}
	/* A detached node keeps its parent pointer while it may still be referenced (the
	 * kernel may ask for its path), so the parent stays too: count it as a live child
	 * until node_maybe_free() lets go of it. */
	parent->dir->live++;
	node_maybe_free(ns, n);
}

/* Re-hangs @n under @parent as @name (rename). */
static int node_move(struct ns *ns, struct ns_node *n, struct ns_node *parent, const char *name)
{
	char *copy = strdup(name);
	struct ns_node *old_parent = n->parent;
	int ret;

	if (!copy)
		return -ENOMEM;
	/* Keep n alive across the detach even when the kernel holds no reference; detach
	 * counted it as a live child of the old parent, which it is about to stop being. */
	n->refs++;
	node_detach(ns, n);
	old_parent->dir->live--;
	free(n->name);
	n->name = copy;
	ret = node_attach(ns, parent, n);
	n->refs--;
	node_maybe_free(ns, old_parent);
	return ret;
}

/* ------------------------------------------------------------------ paths */

/* Writes @n's path relative to its category root into @buf ("" for the root itself). */
static int node_relpath(const struct ns_node *n, char *buf, size_t size)
{
	const struct ns_node *parts[PATH_MAX / 2];
	size_t depth = 0, len = 0;

	if (n->area == NA_MIRROR)
		n = n->alias;
	if (!n || n->area != NA_UNION)
		return -EINVAL;
	for (; n && n->parent && n->parent->area == NA_UNION; n = n->parent) {
		if (depth == ARRAY_SIZE(parts))
			return -ENAMETOOLONG;
		parts[depth++] = n;
	}
	buf[0] = '\0';
	while (depth > 0) {
		const char *name = parts[--depth]->name;
		size_t nl = strlen(name);

		if (len + nl + 2 > size)
			return -ENAMETOOLONG;
		if (len > 0)
			buf[len++] = '/';
		memcpy(buf + len, name, nl + 1);
		len += nl;
	}
	return 0;
}

/* The backing path of @n (a union or mirror node) into @buf. */
static int node_backing(struct ns *ns, const struct ns_node *n, char *buf, size_t size)
{
	char rel[PATH_MAX];
	const struct ns_node *u = n->area == NA_MIRROR ? n->alias : n;
	int ret;

	if (!u || u->area != NA_UNION || u->cat < 0)
		return -ENOENT;
	ret = node_relpath(u, rel, sizeof(rel));
	if (ret < 0)
		return ret;
	if ((size_t)snprintf(buf, size, "%s%s%s", ns->cat_dirs[u->cat], rel[0] ? "/" : "", rel) >=
	    size)
		return -ENAMETOOLONG;
	return 0;
}

/* The backing path of @name under union dir @parent into @buf. */
static int child_backing(struct ns *ns, const struct ns_node *parent, const char *name,
			 char *buf, size_t size)
{
	char dir[PATH_MAX];
	int ret = node_backing(ns, parent, dir, sizeof(dir));

	if (ret < 0)
		return ret;
	if ((size_t)snprintf(buf, size, "%s/%s", dir, name) >= size)
		return -ENAMETOOLONG;
	return 0;
}

/* Finds (creating as needed) the union directory @path of category @cat. */
static struct ns_node *union_dir(struct ns *ns, size_t cat, const char *path, int *err)
{
	struct ns_node *d = ns->cat_roots[cat];
	char comp[NAME_MAX + 1];
	const char *p = path;

	*err = 0;
	while (*p) {
		const char *end = strchr(p, '/');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		struct ns_node *c;

		if (len == 0 || len > NAME_MAX) {
			*err = -EINVAL;
			return NULL;
		}
		memcpy(comp, p, len);
		comp[len] = '\0';
		c = child_find(ns, d, comp);
		if (c && c->kind != NK_DIR) {
			*err = -ENOTDIR;
			return NULL;
		}
		if (!c) {
			c = node_new(ns, comp, NK_DIR, NA_UNION, (int)cat);
			if (!c || node_attach(ns, d, c) < 0) {
				*err = -ENOMEM;
				return NULL;
			}
		}
		d = c;
		p = end ? end + 1 : p + len;
	}
	return d;
}

/* Splits @path into its directory (copied into @dir) and base name (returned). */
static const char *split_path(const char *path, char *dir, size_t size)
{
	const char *slash = strrchr(path, '/');

	if (!slash) {
		dir[0] = '\0';
		return path;
	}
	if ((size_t)(slash - path) >= size)
		return NULL;
	memcpy(dir, path, slash - path);
	dir[slash - path] = '\0';
	return slash + 1;
}

/* ------------------------------------------------------------------ creation */

int ns_create(const struct mfs_config *cfg, const struct ns_hooks *hooks, void *hook_arg,
	      struct ns **out)
{
	struct ns *ns = calloc(1, sizeof(*ns));
	int ret = -ENOMEM;

	if (!ns)
		return -ENOMEM;
	ns->cfg = cfg;
	if (hooks)
		ns->hooks = *hooks;
	ns->hook_arg = hook_arg;
	ns->next_ino = NS_ROOT_INO;
	ns->created_ns = now_ns();
	ns->self_host = (int)(cfg->self - cfg->hosts);
	pthread_rwlock_init(&ns->lock, NULL);
	if (table_init(&ns->by_ino) < 0 || table_init(&ns->by_name) < 0)
		goto fail;

	ns->root = node_new(ns, "", NK_DIR, NA_ROOT, -1);
	if (!ns->root)
		goto fail;
	ns->root->flags |= NF_ATTACHED;
	for (size_t i = 0; i < cfg->n_categories; i++) {
		struct ns_node *c;

		ns->cat_dirs[i] = config_category_dir(cfg, cfg->self, i);
		if (!ns->cat_dirs[i]) {
			ret = -EINVAL;
			log_msg(LOG_ERR, "host %s has neither root nor storage_paths.%s",
				cfg->self->name, cfg->categories[i].name);
			goto fail;
		}
		ns->cat_passthrough[i] = config_is_shared(cfg->self, ns->cat_dirs[i]);
		c = node_new(ns, cfg->categories[i].name, NK_DIR, NA_UNION, (int)i);
		if (!c || node_attach(ns, ns->root, c) < 0)
			goto fail;
		ns->cat_roots[i] = c;
	}
	ns->hosts_dir = node_new(ns, ".hosts", NK_DIR, NA_HOSTS, -1);
	if (!ns->hosts_dir || node_attach(ns, ns->root, ns->hosts_dir) < 0)
		goto fail;
	for (size_t h = 0; h < cfg->n_hosts; h++) {
		struct ns_node *hn = node_new(ns, cfg->hosts[h].name, NK_DIR, NA_HOST, -1);

		if (!hn || node_attach(ns, ns->hosts_dir, hn) < 0)
			goto fail;
		hn->host = (int16_t)h;
		for (size_t i = 0; i < cfg->n_categories; i++) {
			struct ns_node *m = node_new(ns, cfg->categories[i].name, NK_DIR, NA_MIRROR,
						     (int)i);

			if (!m || node_attach(ns, hn, m) < 0)
				goto fail;
			m->host = (int16_t)h;
			m->alias = ns->cat_roots[i];
			m->alias->refs++;
		}
	}
	*out = ns;
	return 0;
fail:
	ns_destroy(ns);
	return ret;
}

void ns_destroy(struct ns *ns)
{
	if (!ns)
		return;
	if (ns->by_ino.buckets) {
		for (size_t i = 0; i <= ns->by_ino.mask; i++) {
			struct ns_node *n = ns->by_ino.buckets[i], *next;

			for (; n; n = next) {
				next = n->ino_next;
				if (n->dir)
					free(n->dir->ents);
				free(n->dir);
				free(n->vers);
				free(n->name);
				free(n);
			}
		}
	}
	free(ns->by_ino.buckets);
	free(ns->by_name.buckets);
	for (size_t i = 0; i < CFG_MAX_CATEGORIES; i++)
		free(ns->cat_dirs[i]);
	pthread_rwlock_destroy(&ns->lock);
	free(ns);
}

const char *ns_category_dir(struct ns *ns, size_t cat_idx)
{
	return cat_idx < ns->cfg->n_categories ? ns->cat_dirs[cat_idx] : NULL;
}

bool ns_category_passthrough(struct ns *ns, size_t cat_idx)
{
	return cat_idx < ns->cfg->n_categories && ns->cat_passthrough[cat_idx];
}

void ns_counts(struct ns *ns, uint64_t *nodes, uint64_t *files, uint64_t *bytes)
{
	pthread_rwlock_rdlock(&ns->lock);
	if (nodes)
		*nodes = ns->n_nodes;
	if (files)
		*files = ns->n_files;
	if (bytes)
		*bytes = ns->n_bytes;
	pthread_rwlock_unlock(&ns->lock);
}

/* ------------------------------------------------------------------ population */

/* Notes one pending kernel invalidation; delivered after the lock is dropped. */
struct ns_inval {
	uint64_t parent;
	uint64_t ino;
	char name[NAME_MAX + 1];
	bool valid;
};

static void inval_deliver(struct ns *ns, const struct ns_inval *iv)
{
	if (iv->valid && ns->hooks.invalidate)
		ns->hooks.invalidate(ns->hook_arg, iv->parent, iv->name[0] ? iv->name : NULL,
				     iv->ino);
}

/* ---- versions ---- */

static size_t node_nvers(const struct ns_node *n)
{
	if (n->vers)
		return n->nvers;
	return (n->flags & NF_PUBLISHED) ? 1 : 0;
}

static struct ns_version node_ver(const struct ns_node *n, size_t i)
{
	struct ns_version v;

	if (n->vers)
		return n->vers[i];
	v.hash = n->hash;
	v.size = n->size;
	v.mtime_ns = n->mtime_ns;
	v.confirmed_at = n->confirmed_at;
	v.host = n->host;
	v.origin = n->origin;
	return v;
}

static int host_cmp(const struct ns *ns, int a, int b)
{
	return strcmp(ns->cfg->hosts[a].name, ns->cfg->hosts[b].name);
}

/*
 * Shows the winning version of @f (INTERFACE.md: greatest mtime_ns, ties to the smallest host
 * name); among the hosts holding those very bytes this node is preferred, so data that is here
 * is read from here. Returns true when what the kernel may have cached changed. The caller
 * keeps ns->n_bytes in step (it counts the size shown).
 */
static bool node_pick(struct ns *ns, struct ns_node *f)
{
	size_t n = node_nvers(f), best = 0;
	struct ns_version w;
	bool changed;

	if (n == 0)
		return false;
	for (size_t i = 1; i < n; i++) {
		struct ns_version v = node_ver(f, i), b = node_ver(f, best);

		if (v.mtime_ns > b.mtime_ns ||
		    (v.mtime_ns == b.mtime_ns && host_cmp(ns, v.host, b.host) < 0))
			best = i;
	}
	w = node_ver(f, best);
	for (size_t i = 0; i < n; i++) {
		struct ns_version v = node_ver(f, i);

		if (v.host == ns->self_host && hash_equal(&v.hash, &w.hash))
			w = v;
	}
	changed = !hash_equal(&f->hash, &w.hash) || f->host != w.host || f->size != w.size ||
		  f->mtime_ns != w.mtime_ns;
	f->hash = w.hash;
	f->size = w.size;
	f->mtime_ns = w.mtime_ns;
	f->confirmed_at = w.confirmed_at;
	f->host = w.host;
	f->origin = w.origin;
	return changed;
}

/* Adds or replaces @host's version in @f. */
static int node_set_version(struct ns_node *f, const struct ns_version *v)
{
	size_t n = node_nvers(f);
	struct ns_version *vers;

	if (!f->vers && n == 1 && f->host == v->host) {
		f->hash = v->hash;
		f->size = v->size;
		f->mtime_ns = v->mtime_ns;
		f->confirmed_at = v->confirmed_at;
		f->origin = v->origin;
		return 0;
	}
	if (n == 0) {
		f->host = v->host;
		f->hash = v->hash;
		f->size = v->size;
		f->mtime_ns = v->mtime_ns;
		f->confirmed_at = v->confirmed_at;
		f->origin = v->origin;
		return 0;
	}
	if (!f->vers) {
		vers = malloc(2 * sizeof(*vers));
		if (!vers)
			return -ENOMEM;
		vers[0] = node_ver(f, 0);
		f->vers = vers;
		f->nvers = 1;
	}
	for (size_t i = 0; i < f->nvers; i++) {
		if (f->vers[i].host == v->host) {
			f->vers[i] = *v;
			return 0;
		}
	}
	vers = realloc(f->vers, (f->nvers + 1) * sizeof(*vers));
	if (!vers)
		return -ENOMEM;
	f->vers = vers;
	f->vers[f->nvers++] = *v;
	return 0;
}

/* Drops @host's version from @f. Returns false if it had none. */
static bool node_drop_version(struct ns_node *f, int host)
{
	if (!f->vers) {
		if (!(f->flags & NF_PUBLISHED) || f->host != host)
			return false;
		f->flags &= ~NF_PUBLISHED;
		return true;
	}
	for (size_t i = 0; i < f->nvers; i++) {
		if (f->vers[i].host != host)
			continue;
		f->vers[i] = f->vers[--f->nvers];
		if (f->nvers == 1) {
			/* Back to one version: keep it inline. */
			struct ns_version v = f->vers[0];

			free(f->vers);
			f->vers = NULL;
			f->nvers = 0;
			f->host = v.host;
			f->hash = v.hash;
			f->size = v.size;
			f->mtime_ns = v.mtime_ns;
			f->confirmed_at = v.confirmed_at;
			f->origin = v.origin;
		}
		return true;
	}
	return false;
}

/* True when @host holds a version at @f; its version in *out. */
static bool node_host_version(const struct ns_node *f, int host, struct ns_version *out)
{
	for (size_t i = 0, n = node_nvers(f); i < n; i++) {
		struct ns_version v = node_ver(f, i);

		if (v.host == host) {
			if (out)
				*out = v;
			return true;
		}
	}
	return false;
}

/* Bitmask of the hosts (index < 64) whose version at @f has the bytes @hash. */
static uint64_t node_sources(const struct ns_node *f, const struct hash128 *hash)
{
	uint64_t mask = 0;

	for (size_t i = 0, n = node_nvers(f); i < n; i++) {
		struct ns_version v = node_ver(f, i);

		if (v.host >= 0 && v.host < 64 && hash_equal(&v.hash, hash))
			mask |= (uint64_t)1 << v.host;
	}
	return mask;
}

/* Whether @f is served from this node's own data dir. */
static bool node_is_local(const struct ns *ns, const struct ns_node *f)
{
	if (f->kind != NK_FILE)
		return true;
	return !(f->flags & NF_PUBLISHED) || f->host == ns->self_host;
}

/* Removes empty directories that exist only because of other hosts' files, bottom up. */
static void prune_dirs(struct ns *ns, struct ns_node *d)
{
	char path[PATH_MAX];
	struct stat st;

	while (d && d->area == NA_UNION && d->parent && d->parent->area == NA_UNION &&
	       d->dir->attached == 0 && (d->flags & NF_ATTACHED)) {
		struct ns_node *parent = d->parent;

		if (node_backing(ns, d, path, sizeof(path)) == 0 && lstat(path, &st) == 0)
			return; /* this node has the directory itself */
		node_detach(ns, d);
		d = parent;
	}
}

static int put_version_locked(struct ns *ns, size_t cat, int host, const struct cat_entry *e,
			      struct ns_inval *iv)
{
	struct ns_version v = {
		.hash = e->hash,
		.size = e->size,
		.mtime_ns = e->mtime_ns,
		.confirmed_at = e->confirmed_at,
		.host = (int16_t)host,
		.origin = (int16_t)host,
	};
	char dir[PATH_MAX];
	const char *base = split_path(e->path, dir, sizeof(dir));
	const struct cfg_host *origin;
	struct ns_node *d, *f;
	bool was_published;
	int err;

	if (!base || !*base)
		return -EINVAL;
	origin = e->origin ? config_find_host(ns->cfg, e->origin) : NULL;
	if (origin)
		v.origin = (int16_t)(origin - ns->cfg->hosts);
	d = union_dir(ns, cat, dir, &err);
	if (!d)
		return err;
	f = child_find(ns, d, base);
	if (f && f->kind == NK_DIR)
		return -EISDIR;
	if (!f) {
		f = node_new(ns, base, NK_FILE, NA_UNION, (int)cat);
		if (!f)
			return -ENOMEM;
		node_set_version(f, &v);
		f->flags |= NF_PUBLISHED;
		err = node_attach(ns, d, f);
		if (err < 0) {
			node_maybe_free(ns, f);
			return err;
		}
		if (d->nlookup > 0 || d == ns->cat_roots[cat]) {
			iv->valid = true;
			iv->parent = d->ino;
			snprintf(iv->name, sizeof(iv->name), "%s", base);
		}
		return 0;
	}
	was_published = f->flags & NF_PUBLISHED;
	if (!was_published && host != ns->self_host && f->host == ns->self_host) {
		/* Being written through the mount here: the writer's file stays what is shown
		 * until it is published and competes like any version. */
		return 0;
	}
	if (was_published)
		ns->n_bytes -= f->size;
	else
		ns->n_files++;
	err = node_set_version(f, &v);
	f->flags |= NF_PUBLISHED;
	if (err == 0)
		node_pick(ns, f);
	ns->n_bytes += f->size;
	if (err < 0)
		return err;
	/* Attributes or content may differ from what the kernel holds: let it ask again. */
	if (f->nlookup > 0) {
		iv->valid = true;
		iv->ino = f->ino;
	}
	return 0;
}

int ns_put_file(struct ns *ns, size_t cat_idx, const struct cat_entry *e)
{
	return ns_put_version(ns, (size_t)ns->self_host, cat_idx, e);
}

int ns_put_version(struct ns *ns, size_t host_idx, size_t cat_idx, const struct cat_entry *e)
{
	struct ns_inval iv = { 0 };
	int ret;

	if (cat_idx >= ns->cfg->n_categories || host_idx >= ns->cfg->n_hosts ||
	    !path_is_clean_relative(e->path))
		return -EINVAL;
	pthread_rwlock_wrlock(&ns->lock);
	ret = put_version_locked(ns, cat_idx, (int)host_idx, e, &iv);
	pthread_rwlock_unlock(&ns->lock);
	inval_deliver(ns, &iv);
	return ret;
}

static struct ns_node *union_find(struct ns *ns, size_t cat, const char *path)
{
	struct ns_node *n = ns->cat_roots[cat];
	char comp[NAME_MAX + 1];
	const char *p = path;

	while (n && *p) {
		const char *end = strchr(p, '/');
		size_t len = end ? (size_t)(end - p) : strlen(p);

		if (len == 0 || len > NAME_MAX)
			return NULL;
		memcpy(comp, p, len);
		comp[len] = '\0';
		n = child_find(ns, n, comp);
		p = end ? end + 1 : p + len;
	}
	return n;
}

/* Drops @host's version of @f; the node goes when no version is left. */
static void drop_version_locked(struct ns *ns, struct ns_node *f, int host, struct ns_inval *iv)
{
	uint64_t old_size = f->size;
	struct ns_node *parent = f->parent;

	if (!node_drop_version(f, host))
		return;
	if (node_nvers(f) > 0) {
		node_pick(ns, f);
		ns->n_bytes += f->size - old_size;
		if (f->nlookup > 0) {
			iv->valid = true;
			iv->ino = f->ino;
		}
		return;
	}
	/* NF_PUBLISHED is already clear, so node_detach() will not count it out. */
	ns->n_files--;
	ns->n_bytes -= old_size;
	iv->valid = true;
	iv->parent = parent->ino;
	snprintf(iv->name, sizeof(iv->name), "%s", f->name);
	node_detach(ns, f);
	prune_dirs(ns, parent);
}

static int remove_locked(struct ns *ns, size_t cat, int host, const char *path, bool want_dir,
			 struct ns_inval *iv)
{
	struct ns_node *n = union_find(ns, cat, path);

	if (!n || n == ns->cat_roots[cat])
		return -ENOENT;
	if (want_dir != (n->kind == NK_DIR))
		return want_dir ? -ENOTDIR : -EISDIR;
	if (want_dir) {
		if (n->dir->attached > 0)
			return -ENOTEMPTY;
		iv->valid = true;
		iv->parent = n->parent->ino;
		snprintf(iv->name, sizeof(iv->name), "%s", n->name);
		node_detach(ns, n);
		return 0;
	}
	if (!(n->flags & NF_PUBLISHED) || !node_host_version(n, host, NULL))
		return -ENOENT; /* being written through the mount, or not that host's */
	drop_version_locked(ns, n, host, iv);
	return 0;
}

int ns_remove_file(struct ns *ns, size_t cat_idx, const char *path)
{
	return ns_remove_version(ns, (size_t)ns->self_host, cat_idx, path);
}

int ns_remove_version(struct ns *ns, size_t host_idx, size_t cat_idx, const char *path)
{
	struct ns_inval iv = { 0 };
	int ret;

	if (cat_idx >= ns->cfg->n_categories || host_idx >= ns->cfg->n_hosts)
		return -EINVAL;
	pthread_rwlock_wrlock(&ns->lock);
	ret = remove_locked(ns, cat_idx, (int)host_idx, path, false, &iv);
	pthread_rwlock_unlock(&ns->lock);
	inval_deliver(ns, &iv);
	return ret;
}

void ns_remove_host(struct ns *ns, size_t host_idx)
{
	struct ns_node **files = NULL;
	size_t n = 0, cap = 0;

	if (host_idx >= ns->cfg->n_hosts || (int)host_idx == ns->self_host)
		return;
	pthread_rwlock_wrlock(&ns->lock);
	/* Collect first: dropping versions changes the tables being walked. */
	for (size_t b = 0; b <= ns->by_ino.mask; b++) {
		for (struct ns_node *f = ns->by_ino.buckets[b]; f; f = f->ino_next) {
			if (f->kind != NK_FILE || f->area != NA_UNION ||
			    !(f->flags & NF_ATTACHED) || !node_host_version(f, (int)host_idx, NULL))
				continue;
			if (n == cap) {
				size_t c = cap ? cap * 2 : 256;
				struct ns_node **bigger = realloc(files, c * sizeof(*files));

				if (!bigger)
					break;
				files = bigger;
				cap = c;
			}
			f->refs++;
			files[n++] = f;
		}
	}
	for (size_t i = 0; i < n; i++) {
		struct ns_inval iv = { 0 };

		drop_version_locked(ns, files[i], (int)host_idx, &iv);
		files[i]->refs--;
		node_maybe_free(ns, files[i]);
	}
	pthread_rwlock_unlock(&ns->lock);
	free(files);
}

int ns_put_dir(struct ns *ns, size_t cat_idx, const char *path)
{
	int err = 0;

	if (cat_idx >= ns->cfg->n_categories || (*path && !path_is_clean_relative(path)))
		return -EINVAL;
	pthread_rwlock_wrlock(&ns->lock);
	union_dir(ns, cat_idx, path, &err);
	pthread_rwlock_unlock(&ns->lock);
	return err;
}

int ns_remove_dir(struct ns *ns, size_t cat_idx, const char *path)
{
	struct ns_inval iv = { 0 };
	int ret;

	if (cat_idx >= ns->cfg->n_categories || !*path)
		return -EINVAL;
	pthread_rwlock_wrlock(&ns->lock);
	ret = remove_locked(ns, cat_idx, ns->self_host, path, true, &iv);
	pthread_rwlock_unlock(&ns->lock);
	inval_deliver(ns, &iv);
	return ret;
}

struct load_ctx {
	struct ns *ns;
	size_t loaded;
	size_t skipped;
};

static int load_one(void *arg, const struct cat_entry *e)
{
	struct load_ctx *lc = arg;
	struct ns_inval iv = { 0 };
	int cat = config_category_index(lc->ns->cfg, e->category);
	const struct cfg_host *h = config_find_host(lc->ns->cfg, e->host);

	if (cat < 0 || !h || !path_is_clean_relative(e->path) ||
	    put_version_locked(lc->ns, (size_t)cat, (int)(h - lc->ns->cfg->hosts), e, &iv) < 0)
		lc->skipped++;
	else
		lc->loaded++;
	return 0;
}

int ns_load(struct ns *ns, struct catalog *cat)
{
	struct load_ctx lc = { .ns = ns };
	int ret;

	/* The tree is not yet visible to anyone, but the catalog callback must not run under
	 * our lock by the locking rules; build it unlocked. */
	ret = catalog_foreach(cat, ns->cfg->node, load_one, &lc);
	if (ret == 0)
		ret = catalog_foreach_remote(cat, ns->cfg->node, load_one, &lc);
	if (ret < 0)
		return ret;
	if (lc.skipped)
		log_msg(LOG_WARNING, "catalog: %zu entries skipped (unknown host or category, or a "
			"bad path)", lc.skipped);
	log_msg(LOG_INFO, "namespace: %zu entries loaded from the catalog", lc.loaded);
	return 0;
}

/* ------------------------------------------------------------------ attributes */

/* What a request needs from a node, copied under the lock so syscalls run without it. */
struct node_snap {
	uint64_t ino;
	uint8_t kind;
	uint8_t area;
	int cat;
	bool has_backing;
	bool read_only;
	bool published;
	bool detached;
	bool remote;		/* the version shown lives on other hosts */
	uint64_t size;
	int64_t mtime_ns;
	struct hash128 hash;
	uint64_t sources;
	char path[PATH_MAX];	/* backing path, or for remote data the path in the category */
};

static bool node_read_only(const struct ns *ns, const struct ns_node *n)
{
	return n->area != NA_UNION || !node_is_local(ns, n);
}

/* The version a node shows: a mirror node shows its host's version of the union file. */
static bool shown_version(const struct ns *ns, const struct ns_node *n, struct ns_version *v)
{
	const struct ns_node *u = n->area == NA_MIRROR ? n->alias : n;

	if (!u || u->kind != NK_FILE || !(u->flags & NF_PUBLISHED))
		return false;
	if (n->area == NA_MIRROR)
		return node_host_version(u, n->host, v);
	*v = node_ver(u, 0);
	v->hash = u->hash;
	v->size = u->size;
	v->mtime_ns = u->mtime_ns;
	v->confirmed_at = u->confirmed_at;
	v->host = u->host;
	v->origin = u->origin;
	return true;
}

static int snap_node(struct ns *ns, const struct ns_node *n, struct node_snap *s)
{
	const struct ns_node *u = n->area == NA_MIRROR ? n->alias : n;
	struct ns_version v;
	bool have = shown_version(ns, n, &v);

	s->ino = n->ino;
	s->kind = n->kind;
	s->area = n->area;
	s->cat = n->cat;
	s->read_only = node_read_only(ns, n);
	s->published = have;
	s->size = have ? v.size : 0;
	s->mtime_ns = have ? v.mtime_ns : 0;
	s->hash = have ? v.hash : (struct hash128){ 0, 0 };
	s->sources = have && u ? node_sources(u, &v.hash) : 0;
	s->remote = have && v.host != ns->self_host;
	/* A detached node's old path may name another file by now. */
	s->detached = !(n->flags & NF_ATTACHED) || (u && !(u->flags & NF_ATTACHED));
	s->has_backing = false;
	if (u && u->area == NA_UNION && !s->detached) {
		if (s->remote)
			node_relpath(u, s->path, sizeof(s->path));
		else
			s->has_backing = node_backing(ns, u, s->path, sizeof(s->path)) == 0;
	}
	if (!s->has_backing && !s->remote)
		s->path[0] = '\0';
	return 0;
}

static void synth_attr(struct ns *ns, const struct node_snap *s, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = NS_SYNTH_INO_BASE + s->ino;
	switch (s->kind) {
	case NK_DIR:
		st->st_mode = S_IFDIR | (s->area == NA_ROOT || s->area == NA_UNION ? 0755 : 0555);
		st->st_nlink = 2;
		break;
	case NK_SYMLINK:
		st->st_mode = S_IFLNK | 0777;
		st->st_nlink = 1;
		break;
	default:
		/* Another host's file: readable by all, written only by its origin. */
		st->st_mode = S_IFREG | 0444;
		st->st_nlink = 1;
		st->st_size = (off_t)s->size;
		st->st_blocks = (blkcnt_t)((s->size + 511) / 512);
		break;
	}
	st->st_blksize = 4096;
	st->st_mtim.tv_sec = (s->mtime_ns ? s->mtime_ns : ns->created_ns) / 1000000000;
	st->st_mtim.tv_nsec = (s->mtime_ns ? s->mtime_ns : ns->created_ns) % 1000000000;
	st->st_atim = st->st_mtim;
	st->st_ctim = st->st_mtim;
}

/* Attributes for a snapshot: the backing file's when there is one, else synthesized. */
static int snap_attr(struct ns *ns, const struct node_snap *s, struct stat *st)
{
	if (s->detached)
		return -ENOENT;
	if (s->has_backing) {
		if (lstat(s->path, st) == 0) {
			if (s->read_only)
				st->st_mode &= ~(mode_t)0222;
			return 0;
		}
		if (errno != ENOENT || s->kind != NK_DIR)
			return -errno;
		/* A directory known from the catalog whose backing dir is missing (a category
		 * never written here yet): show it empty rather than failing. */
	}
	synth_attr(ns, s, st);
	return 0;
}

int ns_getattr(struct ns *ns, uint64_t ino, struct stat *st)
{
	struct node_snap s;
	struct ns_node *n;

	pthread_rwlock_rdlock(&ns->lock);
	n = ino_find(ns, ino);
	if (n)
		snap_node(ns, n, &s);
	pthread_rwlock_unlock(&ns->lock);
	if (!n)
		return -ENOENT;
	return snap_attr(ns, &s, st);
}

int ns_info(struct ns *ns, uint64_t ino, struct ns_info *info)
{
	const struct ns_node *n, *u;
	struct ns_version v;
	int ret = 0;

	memset(info, 0, sizeof(*info));
	info->host_idx = -1;
	pthread_rwlock_rdlock(&ns->lock);
	n = ino_find(ns, ino);
	if (!n) {
		ret = -ENOENT;
		goto out;
	}
	u = n->area == NA_MIRROR ? n->alias : n;
	info->is_dir = n->kind == NK_DIR;
	info->is_file = n->kind == NK_FILE;
	info->is_symlink = n->kind == NK_SYMLINK;
	info->is_root = n == ns->root;
	info->read_only = node_read_only(ns, n);
	info->cat_idx = n->cat;
	if (n->cat >= 0 && ns->cat_passthrough[n->cat])
		info->state = NS_STATE_PASSTHROUGH;
	else
		info->state = NS_STATE_LOCAL;
	if (u && u->area == NA_UNION)
		node_relpath(u, info->path, sizeof(info->path));
	if (shown_version(ns, n, &v)) {
		info->published = true;
		info->hash = v.hash;
		info->size = v.size;
		info->mtime_ns = v.mtime_ns;
		info->confirmed_at = v.confirmed_at;
		info->host_idx = v.host;
		info->sources = node_sources(u, &v.hash);
		if (v.host != ns->self_host)
			info->state = NS_STATE_REMOTE;
		if (v.origin >= 0)
			snprintf(info->origin, sizeof(info->origin), "%s",
				 ns->cfg->hosts[v.origin].name);
	}
	if (!info->origin[0] && n->kind == NK_FILE) {
		/* Being written here: this node is producing it. */
		snprintf(info->origin, sizeof(info->origin), "%s", ns->cfg->node);
		info->host_idx = ns->self_host;
		if (ns->self_host < 64)
			info->sources = (uint64_t)1 << ns->self_host;
	}
out:
	pthread_rwlock_unlock(&ns->lock);
	return ret;
}

/* ------------------------------------------------------------------ lookup */

/* The mirror node for union node @u under mirror dir @parent, made if needed. */
static struct ns_node *mirror_child(struct ns *ns, struct ns_node *parent, struct ns_node *u)
{
	struct ns_node *m = child_find(ns, parent, u->name);

	if (m && m->alias == u)
		return m;
	if (m)
		node_detach(ns, m); /* the union node it showed was replaced */
	m = node_new(ns, u->name, u->kind, NA_MIRROR, u->cat);
	if (!m)
		return NULL;
	m->alias = u;
	u->refs++;
	m->host = parent->host;
	m->flags |= NF_LAZY;
	if (node_attach(ns, parent, m) < 0) {
		node_maybe_free(ns, m);
		return NULL;
	}
	return m;
}

/* Whether mirror dir @parent (of host parent->host) shows union child @u. */
static bool mirror_shows(const struct ns *ns, const struct ns_node *parent,
			 const struct ns_node *u)
{
	if (u->kind == NK_DIR)
		return true;
	if (u->kind == NK_FILE && (u->flags & NF_PUBLISHED))
		return node_host_version(u, parent->host, NULL);
	/* Symlinks and files being written exist only on this node. */
	return parent->host == ns->self_host;
}

/* Finds child @name of @parent (creating mirror nodes on demand). Lock held for writing. */
static struct ns_node *find_child_locked(struct ns *ns, struct ns_node *parent, const char *name)
{
	struct ns_node *u;

	if (parent->kind != NK_DIR)
		return NULL;
	if (parent->area != NA_MIRROR || !parent->alias)
		return child_find(ns, parent, name);
	u = child_find(ns, parent->alias, name);
	if (!u || !mirror_shows(ns, parent, u))
		return NULL;
	return mirror_child(ns, parent, u);
}

int ns_lookup(struct ns *ns, uint64_t parent, const char *name, struct ns_entry *out)
{
	struct node_snap s;
	struct ns_node *p, *n = NULL;
	int ret;

	memset(out, 0, sizeof(*out));
	pthread_rwlock_wrlock(&ns->lock);
	p = ino_find(ns, parent);
	if (!p) {
		ret = -ENOENT;
		goto unlock;
	}
	if (p->kind != NK_DIR) {
		ret = -ENOTDIR;
		goto unlock;
	}
	n = find_child_locked(ns, p, name);
	if (!n) {
		ret = -ENOENT;
		goto unlock;
	}
	n->nlookup++;
	snap_node(ns, n, &s);
	ret = 0;
unlock:
	pthread_rwlock_unlock(&ns->lock);
	if (ret < 0)
		return ret;
	ret = snap_attr(ns, &s, &out->attr);
	if (ret < 0) {
		ns_forget(ns, s.ino, 1);
		return ret;
	}
	out->ino = s.ino;
	out->local = s.has_backing;
	return 0;
}

static void forget_locked(struct ns *ns, struct ns_node *n, uint64_t nlookup)
{
	n->nlookup = nlookup >= n->nlookup ? 0 : n->nlookup - nlookup;
	if (n->nlookup > 0)
		return;
	if ((n->flags & NF_LAZY) && (n->flags & NF_ATTACHED) && (!n->dir || n->dir->live == 0))
		node_detach(ns, n);
	else
		node_maybe_free(ns, n);
}

void ns_forget(struct ns *ns, uint64_t ino, uint64_t nlookup)
{
	struct ns_node *n;

	if (ino == NS_ROOT_INO)
		return;
	pthread_rwlock_wrlock(&ns->lock);
	n = ino_find(ns, ino);
	if (n)
		forget_locked(ns, n, nlookup);
	pthread_rwlock_unlock(&ns->lock);
}

/* ------------------------------------------------------------------ readdir */

#define NS_READDIR_BATCH 128

struct dirent_snap {
	struct node_snap s;
	char name[NAME_MAX + 1];
	off_t next;
};

int ns_readdir(struct ns *ns, uint64_t dir, off_t off, bool plus, ns_dirent_fn fn, void *arg)
{
	struct dirent_snap *batch;
	struct ns_node *d, *src;
	size_t n = 0, i;
	int ret = 0;

	batch = malloc(NS_READDIR_BATCH * sizeof(*batch));
	if (!batch)
		return -ENOMEM;
	pthread_rwlock_wrlock(&ns->lock);
	d = ino_find(ns, dir);
	if (!d || d->kind != NK_DIR) {
		ret = d ? -ENOTDIR : -ENOENT;
		pthread_rwlock_unlock(&ns->lock);
		goto out;
	}
	for (; off < 2 && n < NS_READDIR_BATCH; off++, n++) {
		const struct ns_node *self = off == 0 ? d : (d->parent ? d->parent : d);

		snap_node(ns, self, &batch[n].s);
		batch[n].s.ino = 0;
		snprintf(batch[n].name, sizeof(batch[n].name), "%s", off == 0 ? "." : "..");
		batch[n].next = off + 1;
	}
	src = d->area == NA_MIRROR ? d->alias : d;
	if (src) {
		for (i = dir_seek(src->dir, (uint64_t)off + 1);
		     i < src->dir->n && n < NS_READDIR_BATCH; i++) {
			struct ns_node *c = src->dir->ents[i].node;

			if (!c)
				continue;
			if (src != d) {
				if (!mirror_shows(ns, d, c))
					continue;
				if (plus) {
					c = mirror_child(ns, d, c);
					if (!c)
						continue;
				}
			}
			if (plus)
				c->nlookup++;
			snap_node(ns, c, &batch[n].s);
			snprintf(batch[n].name, sizeof(batch[n].name), "%s", c->name);
			batch[n].next = src->dir->ents[i].cookie;
			n++;
		}
	}
	pthread_rwlock_unlock(&ns->lock);

	for (i = 0; i < n; i++) {
		struct stat st;

		if (plus) {
			if (snap_attr(ns, &batch[i].s, &st) < 0)
				synth_attr(ns, &batch[i].s, &st);
		} else {
			synth_attr(ns, &batch[i].s, &st);
		}
		if (fn(arg, batch[i].name, &st, batch[i].s.ino, batch[i].next))
			break;
	}
	/* Entries the caller did not take keep no reference. */
	for (; plus && i < n; i++)
		if (batch[i].s.ino)
			ns_forget(ns, batch[i].s.ino, 1);
out:
	free(batch);
	return ret;
}

/* ------------------------------------------------------------------ open, release */

int ns_open(struct ns *ns, uint64_t ino, int flags, int *fd, bool *keep_cache,
	    struct ns_remote *remote)
{
	bool writing = (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC);
	struct node_snap s;
	struct ns_node *n;
	struct stat st;
	int ret = 0;

	pthread_rwlock_rdlock(&ns->lock);
	n = ino_find(ns, ino);
	if (n)
		snap_node(ns, n, &s);
	pthread_rwlock_unlock(&ns->lock);
	if (!n || s.detached)
		return -ENOENT;
	if (s.kind == NK_DIR)
		return -EISDIR;
	if (writing && s.read_only)
		return -EROFS;
	if (s.remote) {
		if (!remote)
			return -EREMOTE;
		remote->cat_idx = (size_t)s.cat;
		snprintf(remote->path, sizeof(remote->path), "%s", s.path);
		remote->hash = s.hash;
		remote->size = s.size;
		remote->mtime_ns = s.mtime_ns;
		remote->sources = s.sources;
		return -EREMOTE;
	}
	if (!s.has_backing)
		return -ENOENT;

	*fd = open(s.path, (flags & ~(O_CREAT | O_EXCL | O_NOCTTY)) | O_CLOEXEC | O_NOFOLLOW);
	if (*fd < 0)
		return -errno;
	if (fstat(*fd, &st) < 0) {
		ret = -errno;
		close(*fd);
		*fd = -1;
		return ret;
	}
	pthread_rwlock_wrlock(&ns->lock);
	n = ino_find(ns, ino);
	*keep_cache = n && (n->flags & NF_OPENED) && n->open_size == (uint64_t)st.st_size &&
		      n->open_mtime_ns == (int64_t)st.st_mtim.tv_sec * 1000000000 +
						  st.st_mtim.tv_nsec;
	if (n) {
		n->flags |= NF_OPENED;
		n->open_size = st.st_size;
		n->open_mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
		if (writing)
			n->open_writers++;
	}
	pthread_rwlock_unlock(&ns->lock);
	return 0;
}

void ns_release(struct ns *ns, uint64_t ino, bool writable, bool wrote)
{
	char rel[PATH_MAX];
	struct ns_node *n;
	int cat = -1;

	pthread_rwlock_wrlock(&ns->lock);
	n = ino_find(ns, ino);
	if (n && writable && n->open_writers > 0)
		n->open_writers--;
	if (n && wrote) {
		n->flags &= ~NF_OPENED;
		if ((n->flags & NF_ATTACHED) && n->area == NA_UNION && n->open_writers == 0 &&
		    node_relpath(n, rel, sizeof(rel)) == 0)
			cat = n->cat;
	}
	pthread_rwlock_unlock(&ns->lock);
	if (cat >= 0 && ns->hooks.written)
		ns->hooks.written(ns->hook_arg, (size_t)cat, rel);
}

/* ------------------------------------------------------------------ changes */

/*
 * Resolves @parent for a change: it must be a writable union directory. Copies the backing
 * path of @name under it into @path. Takes and drops the lock.
 */
static int prepare_change(struct ns *ns, uint64_t parent, const char *name, char *path,
			  size_t size, int *cat)
{
	struct ns_node *p;
	int ret = 0;

	if (strlen(name) > NAME_MAX)
		return -ENAMETOOLONG;
	if (strchr(name, '/') || !strcmp(name, ".") || !strcmp(name, ".."))
		return -EINVAL;
	pthread_rwlock_rdlock(&ns->lock);
	p = ino_find(ns, parent);
	if (!p)
		ret = -ENOENT;
	else if (p->kind != NK_DIR)
		ret = -ENOTDIR;
	else if (node_read_only(ns, p))
		ret = -EROFS;
	else
		ret = child_backing(ns, p, name, path, size);
	if (ret == 0) {
		struct ns_node *c = child_find(ns, p, name);

		*cat = p->cat;
		/* Another host's file is read-only here, whatever the operation. */
		if (c && c->kind == NK_FILE && !node_is_local(ns, c))
			ret = -EROFS;
	}
	pthread_rwlock_unlock(&ns->lock);
	if (ret == 0) {
		/* The directory may exist only on other hosts so far (or, for a category root,
		 * nowhere yet): what is written here is created in this node's data dir. */
		char *slash = strrchr(path, '/');
		struct stat st;

		*slash = '\0';
		if (lstat(path, &st) < 0 && errno == ENOENT)
			ret = mkdir_p(path, 0755);
		*slash = '/';
	}
	return ret;
}

/* Adds a node for a new backing object @name under @parent, with one kernel reference. */
static int add_new_node(struct ns *ns, uint64_t parent, const char *name, enum ns_kind kind,
			const struct stat *st, bool writer, struct ns_entry *out)
{
	struct ns_node *p, *n;
	int ret = 0;

	pthread_rwlock_wrlock(&ns->lock);
	p = ino_find(ns, parent);
	if (!p || !(p->flags & NF_ATTACHED)) {
		ret = -ENOENT;
		goto out;
	}
	n = child_find(ns, p, name);
	if (n && n->kind != kind) {
		node_detach(ns, n);
		n = NULL;
	}
	if (!n) {
		n = node_new(ns, name, kind, NA_UNION, p->cat);
		if (!n) {
			ret = -ENOMEM;
			goto out;
		}
		n->host = (int16_t)ns->self_host;
		ret = node_attach(ns, p, n);
		if (ret < 0) {
			node_maybe_free(ns, n);
			goto out;
		}
	}
	n->nlookup++;
	if (writer)
		n->open_writers++;
	n->flags |= NF_OPENED;
	n->open_size = st->st_size;
	n->open_mtime_ns = (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
	out->ino = n->ino;
	out->attr = *st;
	out->local = true;
out:
	pthread_rwlock_unlock(&ns->lock);
	return ret;
}

static void chown_new(int dirfd_or_fd, const char *path, const struct ns_caller *who)
{
	int r;

	if (!who)
		return;
	if (path)
		r = lchown(path, who->uid, who->gid);
	else
		r = fchown(dirfd_or_fd, who->uid, who->gid);
	if (r < 0)
		log_msg(LOG_WARNING, "chown of a new file to %u:%u failed: %s", (unsigned)who->uid,
			(unsigned)who->gid, strerror(errno));
}

int ns_create_file(struct ns *ns, uint64_t parent, const char *name, mode_t mode, int flags,
		   const struct ns_caller *who, int *fd, struct ns_entry *out)
{
	char path[PATH_MAX];
	struct stat st;
	bool created = true;
	int cat, ret;

	*fd = -1;
	ret = prepare_change(ns, parent, name, path, sizeof(path), &cat);
	if (ret < 0)
		return ret;
	flags = (flags & ~O_NOCTTY) | O_CLOEXEC | O_NOFOLLOW;
	*fd = open(path, flags | O_CREAT | O_EXCL, mode & 07777);
	if (*fd < 0 && errno == EEXIST && !(flags & O_EXCL)) {
		created = false;
		*fd = open(path, flags & ~O_CREAT, mode & 07777);
	}
	if (*fd < 0)
		return -errno;
	if (created)
		chown_new(*fd, NULL, who);
	if (fstat(*fd, &st) < 0) {
		ret = -errno;
		goto fail;
	}
	ret = add_new_node(ns, parent, name, NK_FILE, &st, (flags & O_ACCMODE) != O_RDONLY, out);
	if (ret < 0)
		goto fail;
	return 0;
fail:
	close(*fd);
	*fd = -1;
	if (created)
		unlink(path);
	return ret;
}

/* Shared tail of mknod/mkdir/symlink: chown, stat, add the node; undo on failure. */
static int finish_new(struct ns *ns, uint64_t parent, const char *name, const char *path,
		      enum ns_kind kind, const struct ns_caller *who, struct ns_entry *out)
{
	struct stat st;
	int ret;

	chown_new(-1, path, who);
	if (lstat(path, &st) < 0)
		ret = -errno;
	else
		ret = add_new_node(ns, parent, name, kind, &st, false, out);
	if (ret < 0) {
		if (kind == NK_DIR)
			rmdir(path);
		else
			unlink(path);
	}
	return ret;
}

int ns_mknod(struct ns *ns, uint64_t parent, const char *name, mode_t mode, dev_t rdev,
	     const struct ns_caller *who, struct ns_entry *out)
{
	char path[PATH_MAX], rel[PATH_MAX];
	int cat, ret;

	if (!S_ISREG(mode))
		return -EPERM; /* devices, FIFOs and sockets have no place in a data mesh */
	ret = prepare_change(ns, parent, name, path, sizeof(path), &cat);
	if (ret < 0)
		return ret;
	if (mknod(path, mode, 0) < 0)
		return -errno;
	ret = finish_new(ns, parent, name, path, NK_FILE, who, out);
	if (ret == 0) {
		pthread_rwlock_rdlock(&ns->lock);
		struct ns_node *n = ino_find(ns, out->ino);

		ret = n ? node_relpath(n, rel, sizeof(rel)) : -ENOENT;
		pthread_rwlock_unlock(&ns->lock);
		if (ret == 0 && ns->hooks.written)
			ns->hooks.written(ns->hook_arg, (size_t)cat, rel);
		ret = 0;
	}
	return ret;
}

int ns_mkdir(struct ns *ns, uint64_t parent, const char *name, mode_t mode,
	     const struct ns_caller *who, struct ns_entry *out)
{
	char path[PATH_MAX];
	int cat, ret;

	ret = prepare_change(ns, parent, name, path, sizeof(path), &cat);
	if (ret < 0)
		return ret;
	if (mkdir(path, mode & 07777) < 0)
		return -errno;
	return finish_new(ns, parent, name, path, NK_DIR, who, out);
}

int ns_symlink(struct ns *ns, uint64_t parent, const char *name, const char *target,
	       const struct ns_caller *who, struct ns_entry *out)
{
	char path[PATH_MAX];
	int cat, ret;

	ret = prepare_change(ns, parent, name, path, sizeof(path), &cat);
	if (ret < 0)
		return ret;
	if (symlink(target, path) < 0)
		return -errno;
	return finish_new(ns, parent, name, path, NK_SYMLINK, who, out);
}

int ns_link(struct ns *ns, uint64_t ino, uint64_t newparent, const char *newname,
	    struct ns_entry *out)
{
	char path[PATH_MAX], rel[PATH_MAX];
	struct node_snap s;
	struct ns_node *n;
	struct stat st;
	int cat, ret;

	pthread_rwlock_rdlock(&ns->lock);
	n = ino_find(ns, ino);
	if (n)
		snap_node(ns, n, &s);
	pthread_rwlock_unlock(&ns->lock);
	if (!n)
		return -ENOENT;
	if (s.kind == NK_DIR)
		return -EPERM;
	if (s.read_only || !s.has_backing)
		return -EROFS;
	ret = prepare_change(ns, newparent, newname, path, sizeof(path), &cat);
	if (ret < 0)
		return ret;
	if (cat != s.cat)
		return -EXDEV;
	if (link(s.path, path) < 0)
		return -errno;
	if (lstat(path, &st) < 0) {
		ret = -errno;
		unlink(path);
		return ret;
	}
	ret = add_new_node(ns, newparent, newname, s.kind, &st, false, out);
	if (ret < 0) {
		unlink(path);
		return ret;
	}
	pthread_rwlock_rdlock(&ns->lock);
	n = ino_find(ns, out->ino);
	ret = n ? node_relpath(n, rel, sizeof(rel)) : -ENOENT;
	pthread_rwlock_unlock(&ns->lock);
	if (ret == 0 && s.kind == NK_FILE && ns->hooks.written)
		ns->hooks.written(ns->hook_arg, (size_t)cat, rel);
	return 0;
}

/* Unlink or rmdir of @name in @parent. */
static int remove_entry(struct ns *ns, uint64_t parent, const char *name, bool dir)
{
	char path[PATH_MAX], rel[PATH_MAX];
	struct ns_node *p, *n;
	bool published = false;
	int cat, ret;

	ret = prepare_change(ns, parent, name, path, sizeof(path), &cat);
	if (ret < 0)
		return ret;
	pthread_rwlock_rdlock(&ns->lock);
	p = ino_find(ns, parent);
	n = p ? child_find(ns, p, name) : NULL;
	if (n && dir != (n->kind == NK_DIR))
		ret = dir ? -ENOTDIR : -EISDIR;
	pthread_rwlock_unlock(&ns->lock);
	if (ret < 0)
		return ret;
	if ((dir ? rmdir(path) : unlink(path)) < 0)
		return -errno;

	pthread_rwlock_wrlock(&ns->lock);
	p = ino_find(ns, parent);
	n = p ? child_find(ns, p, name) : NULL;
	if (n) {
		published = n->flags & NF_PUBLISHED;
		if (node_relpath(n, rel, sizeof(rel)) < 0)
			published = false;
		node_detach(ns, n);
	}
	pthread_rwlock_unlock(&ns->lock);
	if (published && ns->hooks.removed)
		ns->hooks.removed(ns->hook_arg, (size_t)cat, rel);
	return 0;
}

int ns_unlink(struct ns *ns, uint64_t parent, const char *name)
{
	return remove_entry(ns, parent, name, false);
}

int ns_rmdir(struct ns *ns, uint64_t parent, const char *name)
{
	return remove_entry(ns, parent, name, true);
}

int ns_rename(struct ns *ns, uint64_t parent, const char *name, uint64_t newparent,
	      const char *newname, unsigned flags)
{
	char from[PATH_MAX], to[PATH_MAX], old_rel[PATH_MAX], new_rel[PATH_MAX];
	struct ns_node *p, *np, *src, *dst;
	int cat, newcat, ret;
	bool is_dir = false, exchanged = false, moved = false;

	ret = prepare_change(ns, parent, name, from, sizeof(from), &cat);
	if (ret < 0)
		return ret;
	ret = prepare_change(ns, newparent, newname, to, sizeof(to), &newcat);
	if (ret < 0)
		return ret;
	if (cat != newcat)
		return -EXDEV; /* another category is another backing tree and catalog key */
	if (renameat2(AT_FDCWD, from, AT_FDCWD, to, flags) < 0)
		return -errno;

	pthread_rwlock_wrlock(&ns->lock);
	p = ino_find(ns, parent);
	np = ino_find(ns, newparent);
	src = p ? child_find(ns, p, name) : NULL;
	dst = np ? child_find(ns, np, newname) : NULL;
	if (!src || !np || src == dst)
		goto unlock;
	is_dir = src->kind == NK_DIR;
	node_relpath(src, old_rel, sizeof(old_rel));
	if (dst) {
		dst->refs++;
		node_detach(ns, dst);
	}
	if (node_move(ns, src, np, newname) < 0)
		log_msg(LOG_ERR, "namespace: out of memory moving %s", old_rel);
	node_relpath(src, new_rel, sizeof(new_rel));
	moved = true;
	if (dst) {
		/* Exchanged: the old target takes the source's place. Otherwise it was
		 * replaced and stays detached for as long as the kernel holds it. */
		if ((flags & RENAME_EXCHANGE) && node_move(ns, dst, p, name) == 0)
			exchanged = true;
		dst->refs--;
		node_maybe_free(ns, dst);
	}
unlock:
	pthread_rwlock_unlock(&ns->lock);
	if (!moved)
		return 0;
	if (exchanged) {
		if (ns->hooks.written) {
			ns->hooks.written(ns->hook_arg, (size_t)cat, old_rel);
			ns->hooks.written(ns->hook_arg, (size_t)cat, new_rel);
		}
	} else if (ns->hooks.renamed) {
		ns->hooks.renamed(ns->hook_arg, (size_t)cat, old_rel, new_rel, is_dir);
	}
	return 0;
}

int ns_readlink(struct ns *ns, uint64_t ino, char **target)
{
	char buf[PATH_MAX];
	struct node_snap s;
	struct ns_node *n;
	ssize_t len;

	pthread_rwlock_rdlock(&ns->lock);
	n = ino_find(ns, ino);
	if (n)
		snap_node(ns, n, &s);
	pthread_rwlock_unlock(&ns->lock);
	if (!n)
		return -ENOENT;
	if (s.kind != NK_SYMLINK || !s.has_backing)
		return -EINVAL;
	len = readlink(s.path, buf, sizeof(buf) - 1);
	if (len < 0)
		return -errno;
	buf[len] = '\0';
	*target = strdup(buf);
	return *target ? 0 : -ENOMEM;
}

int ns_setattr(struct ns *ns, uint64_t ino, const struct stat *st, unsigned to_set, int fd,
	       struct stat *out)
{
	char rel[PATH_MAX];
	struct node_snap s;
	struct ns_node *n;
	int ret = 0;

	pthread_rwlock_rdlock(&ns->lock);
	n = ino_find(ns, ino);
	if (n) {
		snap_node(ns, n, &s);
		if (node_relpath(n, rel, sizeof(rel)) < 0)
			rel[0] = '\0';
	}
	pthread_rwlock_unlock(&ns->lock);
	if (!n)
		return -ENOENT;
	if (s.read_only || !s.has_backing)
		return -EROFS;

	if (to_set & NS_SET_MODE) {
		if (s.kind == NK_SYMLINK)
			ret = -EOPNOTSUPP;
		else if ((fd >= 0 ? fchmod(fd, st->st_mode & 07777)
				  : chmod(s.path, st->st_mode & 07777)) < 0)
			ret = -errno;
		if (ret < 0)
			return ret;
	}
	if (to_set & (NS_SET_UID | NS_SET_GID)) {
		uid_t uid = (to_set & NS_SET_UID) ? st->st_uid : (uid_t)-1;
		gid_t gid = (to_set & NS_SET_GID) ? st->st_gid : (gid_t)-1;

		if ((fd >= 0 ? fchown(fd, uid, gid) : lchown(s.path, uid, gid)) < 0)
			return -errno;
	}
	if (to_set & NS_SET_SIZE) {
		if (s.kind != NK_FILE)
			return -EINVAL;
		if ((fd >= 0 ? ftruncate(fd, st->st_size) : truncate(s.path, st->st_size)) < 0)
			return -errno;
	}
	if (to_set & (NS_SET_ATIME | NS_SET_MTIME | NS_SET_ATIME_NOW | NS_SET_MTIME_NOW)) {
		struct timespec tv[2] = { { .tv_nsec = UTIME_OMIT }, { .tv_nsec = UTIME_OMIT } };

		if (to_set & NS_SET_ATIME_NOW)
			tv[0].tv_nsec = UTIME_NOW;
		else if (to_set & NS_SET_ATIME)
			tv[0] = st->st_atim;
		if (to_set & NS_SET_MTIME_NOW)
			tv[1].tv_nsec = UTIME_NOW;
		else if (to_set & NS_SET_MTIME)
			tv[1] = st->st_mtim;
		if ((fd >= 0 ? futimens(fd, tv)
			     : utimensat(AT_FDCWD, s.path, tv, AT_SYMLINK_NOFOLLOW)) < 0)
			return -errno;
	}
	if ((fd >= 0 ? fstat(fd, out) : lstat(s.path, out)) < 0)
		return -errno;
	/* A truncate without an open file changes content nobody will close: publish now. */
	if ((to_set & NS_SET_SIZE) && fd < 0 && s.cat >= 0 && rel[0] && ns->hooks.written)
		ns->hooks.written(ns->hook_arg, (size_t)s.cat, rel);
	return 0;
}

int ns_statfs(struct ns *ns, uint64_t ino, struct statvfs *st)
{
	char path[PATH_MAX] = "/";
	struct ns_node *n;

	pthread_rwlock_rdlock(&ns->lock);
	n = ino_find(ns, ino);
	if (n && n->cat >= 0)
		snprintf(path, sizeof(path), "%s", ns->cat_dirs[n->cat]);
	else if (ns->cfg->n_categories > 0)
		snprintf(path, sizeof(path), "%s", ns->cat_dirs[0]);
	pthread_rwlock_unlock(&ns->lock);
	/* A category dir that does not exist yet: ask its nearest existing ancestor. */
	while (statvfs(path, st) < 0) {
		char *slash = strrchr(path, '/');

		if (errno != ENOENT || !slash || slash == path)
			return statvfs("/", st) < 0 ? -errno : 0;
		*slash = '\0';
	}
	return 0;
}
