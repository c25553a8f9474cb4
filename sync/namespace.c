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
#include "sync/namespace_int.h"

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
#include "sync/shared.h"
#include "sync/util.h"

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

struct ns_node *ns_ino_find(struct ns *ns, uint64_t ino)
{
	struct ns_node *n = ns->by_ino.buckets[ino_hash(ino) & ns->by_ino.mask];

	while (n && n->ino != ino)
		n = n->ino_next;
	return n;
}

struct ns_node *ns_child_find(struct ns *ns, const struct ns_node *parent, const char *name)
{
	struct ns_node *n = ns->by_name.buckets[name_hash(parent, name) & ns->by_name.mask];

	while (n && (n->parent != parent || strcmp(n->name, name) != 0))
		n = n->name_next;
	return n;
}

/* ------------------------------------------------------------------ nodes */

struct ns_node *ns_node_new(struct ns *ns, const char *name, enum ns_kind kind,
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
void ns_node_maybe_free(struct ns *ns, struct ns_node *n)
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
			ns_node_maybe_free(ns, alias);
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
uint32_t ns_dir_seek(const struct ns_dir *d, uint64_t cookie)
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
	uint32_t i = ns_dir_seek(d, child->cookie);

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
int ns_node_attach(struct ns *ns, struct ns_node *parent, struct ns_node *child)
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
void ns_node_detach(struct ns *ns, struct ns_node *n)
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
	 * until ns_node_maybe_free() lets go of it. */
	parent->dir->live++;
	ns_node_maybe_free(ns, n);
}

/* Re-hangs @n under @parent as @name (rename). */
int ns_node_move(struct ns *ns, struct ns_node *n, struct ns_node *parent, const char *name)
{
	char *copy = strdup(name);
	struct ns_node *old_parent = n->parent;
	int ret;

	if (!copy)
		return -ENOMEM;
	/* Keep n alive across the detach even when the kernel holds no reference; detach
	 * counted it as a live child of the old parent, which it is about to stop being. */
	n->refs++;
	ns_node_detach(ns, n);
	old_parent->dir->live--;
	free(n->name);
	n->name = copy;
	ret = ns_node_attach(ns, parent, n);
	n->refs--;
	ns_node_maybe_free(ns, old_parent);
	return ret;
}

/* ------------------------------------------------------------------ paths */

/* Writes @n's path relative to its category root into @buf ("" for the root itself). */
int ns_node_relpath(const struct ns_node *n, char *buf, size_t size)
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
int ns_node_backing(struct ns *ns, const struct ns_node *n, char *buf, size_t size)
{
	char rel[PATH_MAX];
	const struct ns_node *u = n->area == NA_MIRROR ? n->alias : n;
	int ret;

	if (!u || u->area != NA_UNION || u->cat < 0)
		return -ENOENT;
	ret = ns_node_relpath(u, rel, sizeof(rel));
	if (ret < 0)
		return ret;
	if ((size_t)snprintf(buf, size, "%s%s%s", ns->cat_dirs[u->cat], rel[0] ? "/" : "", rel) >=
	    size)
		return -ENAMETOOLONG;
	return 0;
}

/* The backing path of @name under union dir @parent into @buf. */
int ns_child_backing(struct ns *ns, const struct ns_node *parent, const char *name,
			 char *buf, size_t size)
{
	char dir[PATH_MAX];
	int ret = ns_node_backing(ns, parent, dir, sizeof(dir));

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
		c = ns_child_find(ns, d, comp);
		if (c && c->kind != NK_DIR) {
			*err = -ENOTDIR;
			return NULL;
		}
		if (!c) {
			c = ns_node_new(ns, comp, NK_DIR, NA_UNION, (int)cat);
			if (!c || ns_node_attach(ns, d, c) < 0) {
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

	ns->root = ns_node_new(ns, "", NK_DIR, NA_ROOT, -1);
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
		ns->cat_shared[i] = config_is_shared(cfg->self, ns->cat_dirs[i]);
		ns->cat_mode[i] = ns->cat_shared[i] ? NS_CAT_PASSTHROUGH : NS_CAT_LOCAL;
		c = ns_node_new(ns, cfg->categories[i].name, NK_DIR, NA_UNION, (int)i);
		if (!c || ns_node_attach(ns, ns->root, c) < 0)
			goto fail;
		ns->cat_roots[i] = c;
	}
	ns->hosts_dir = ns_node_new(ns, ".hosts", NK_DIR, NA_HOSTS, -1);
	if (!ns->hosts_dir || ns_node_attach(ns, ns->root, ns->hosts_dir) < 0)
		goto fail;
	for (size_t h = 0; h < cfg->n_hosts; h++) {
		struct ns_node *hn = ns_node_new(ns, cfg->hosts[h].name, NK_DIR, NA_HOST, -1);

		if (!hn || ns_node_attach(ns, ns->hosts_dir, hn) < 0)
			goto fail;
		hn->host = (int16_t)h;
		for (size_t i = 0; i < cfg->n_categories; i++) {
			struct ns_node *m = ns_node_new(ns, cfg->categories[i].name, NK_DIR,
							NA_MIRROR, (int)i);

			if (!m || ns_node_attach(ns, hn, m) < 0)
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

enum ns_cat_mode ns_cat_mode_of(const struct ns *ns, int cat)
{
	if (cat < 0 || (size_t)cat >= ns->cfg->n_categories)
		return NS_CAT_LOCAL;
	return (enum ns_cat_mode)__atomic_load_n(&ns->cat_mode[cat], __ATOMIC_RELAXED);
}

enum ns_cat_mode ns_category_mode(struct ns *ns, size_t cat_idx)
{
	return cat_idx < ns->cfg->n_categories ? ns_cat_mode_of(ns, (int)cat_idx) : NS_CAT_LOCAL;
}

bool ns_category_passthrough(struct ns *ns, size_t cat_idx)
{
	return ns_category_mode(ns, cat_idx) == NS_CAT_PASSTHROUGH;
}

bool ns_path_hidden(const char *rel)
{
	size_t n = sizeof(SHARED_PROBE_DIR) - 1;

	return strncmp(rel, SHARED_PROBE_DIR, n) == 0 && (rel[n] == '\0' || rel[n] == '/');
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

struct ns_version ns_node_ver(const struct ns_node *n, size_t i)
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
 * is read from here (unless its category is NS_CAT_UNREADABLE). Returns true when what the
 * kernel may have cached changed. The caller keeps ns->n_bytes in step (it counts the size
 * shown).
 */
static bool node_pick(struct ns *ns, struct ns_node *f)
{
	size_t n = node_nvers(f), best = 0;
	struct ns_version w;
	bool changed, prefer_self;

	if (n == 0)
		return false;
	for (size_t i = 1; i < n; i++) {
		struct ns_version v = ns_node_ver(f, i), b = ns_node_ver(f, best);

		if (v.mtime_ns > b.mtime_ns ||
		    (v.mtime_ns == b.mtime_ns && host_cmp(ns, v.host, b.host) < 0))
			best = i;
	}
	w = ns_node_ver(f, best);
	/* Where this node's copy cannot be read (shared storage missing or hung here), another
	 * holder of the same bytes is shown instead, so a read fetches it. */
	prefer_self = ns_cat_mode_of(ns, f->cat) != NS_CAT_UNREADABLE;
	for (size_t i = 0; i < n; i++) {
		struct ns_version v = ns_node_ver(f, i);

		if (!hash_equal(&v.hash, &w.hash))
			continue;
		if (prefer_self ? v.host == ns->self_host
				: w.host == ns->self_host && v.host != ns->self_host)
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
		vers[0] = ns_node_ver(f, 0);
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
bool ns_node_host_version(const struct ns_node *f, int host, struct ns_version *out)
{
	for (size_t i = 0, n = node_nvers(f); i < n; i++) {
		struct ns_version v = ns_node_ver(f, i);

		if (v.host == host) {
			if (out)
				*out = v;
			return true;
		}
	}
	return false;
}

/* Bitmask of the hosts (index < 64) whose version at @f has the bytes @hash. */
uint64_t ns_node_sources(const struct ns_node *f, const struct hash128 *hash)
{
	uint64_t mask = 0;

	for (size_t i = 0, n = node_nvers(f); i < n; i++) {
		struct ns_version v = ns_node_ver(f, i);

		if (v.host >= 0 && v.host < 64 && hash_equal(&v.hash, hash))
			mask |= (uint64_t)1 << v.host;
	}
	return mask;
}

/* Whether @f is served from this node's own data dir. */
bool ns_node_is_local(const struct ns *ns, const struct ns_node *f)
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

		if (ns_node_backing(ns, d, path, sizeof(path)) == 0 && lstat(path, &st) == 0)
			return; /* this node has the directory itself */
		ns_node_detach(ns, d);
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
	f = ns_child_find(ns, d, base);
	if (f && f->kind == NK_DIR)
		return -EISDIR;
	if (!f) {
		f = ns_node_new(ns, base, NK_FILE, NA_UNION, (int)cat);
		if (!f)
			return -ENOMEM;
		node_set_version(f, &v);
		f->flags |= NF_PUBLISHED;
		err = ns_node_attach(ns, d, f);
		if (err < 0) {
			ns_node_maybe_free(ns, f);
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
	if (ns_path_hidden(e->path))
		return 0; /* a shared-storage probe file (sync/shared.h): never shown */
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
		n = ns_child_find(ns, n, comp);
		p = end ? end + 1 : p + len;
	}
	return n;
}

int ns_find_file(struct ns *ns, size_t cat_idx, const char *path, struct ns_found *out,
		 const struct hash128 *hash, uint64_t *holders)
{
	struct ns_node *f;
	int ret = -ENOENT;

	if (cat_idx >= ns->cfg->n_categories || !path_is_clean_relative(path))
		return -EINVAL;
	pthread_rwlock_rdlock(&ns->lock);
	f = union_find(ns, cat_idx, path);
	if (!f || f->kind != NK_FILE || node_nvers(f) == 0)
		goto out;
	memset(out, 0, sizeof(*out));
	out->remote.cat_idx = cat_idx;
	snprintf(out->remote.path, sizeof(out->remote.path), "%s", path);
	out->remote.hash = f->hash;
	out->remote.size = f->size;
	out->remote.mtime_ns = f->mtime_ns;
	out->remote.sources = ns_node_sources(f, &f->hash);
	out->host = f->host;
	out->origin = f->origin;
	out->confirmed_at = f->confirmed_at;
	if (hash && holders)
		*holders = ns_node_sources(f, hash);
	ret = 0;
out:
	pthread_rwlock_unlock(&ns->lock);
	return ret;
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
	/* NF_PUBLISHED is already clear, so ns_node_detach() will not count it out. */
	ns->n_files--;
	ns->n_bytes -= old_size;
	iv->valid = true;
	iv->parent = parent->ino;
	snprintf(iv->name, sizeof(iv->name), "%s", f->name);
	ns_node_detach(ns, f);
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
		ns_node_detach(ns, n);
		return 0;
	}
	if (!(n->flags & NF_PUBLISHED) || !ns_node_host_version(n, host, NULL))
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
			    !(f->flags & NF_ATTACHED) ||
			    !ns_node_host_version(f, (int)host_idx, NULL))
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
		ns_node_maybe_free(ns, files[i]);
	}
	pthread_rwlock_unlock(&ns->lock);
	free(files);
}

/* Re-picks the shown version of every file of category @cat held by several hosts; the ones
 * the kernel knows and that changed go into *@invs (best effort: on ENOMEM the kernel keeps
 * its copy until its timeout). Lock held for writing. */
static void repick_category(struct ns *ns, int cat, uint64_t **invs, size_t *n_invs)
{
	size_t cap = 0;

	for (size_t b = 0; b <= ns->by_ino.mask; b++) {
		for (struct ns_node *f = ns->by_ino.buckets[b]; f; f = f->ino_next) {
			uint64_t old_size = f->size;

			if (f->kind != NK_FILE || f->area != NA_UNION || f->cat != cat ||
			    !(f->flags & NF_ATTACHED) || !(f->flags & NF_PUBLISHED) || !f->vers)
				continue;
			if (!node_pick(ns, f))
				continue;
			ns->n_bytes += f->size - old_size;
			if (f->nlookup == 0)
				continue;
			if (*n_invs == cap) {
				size_t c = cap ? cap * 2 : 64;
				uint64_t *bigger = realloc(*invs, c * sizeof(**invs));

				if (!bigger)
					continue;
				*invs = bigger;
				cap = c;
			}
			(*invs)[(*n_invs)++] = f->ino;
		}
	}
}

void ns_set_category_mode(struct ns *ns, size_t cat_idx, enum ns_cat_mode mode)
{
	uint64_t *invs = NULL;
	size_t n_invs = 0;
	enum ns_cat_mode old;

	if (cat_idx >= ns->cfg->n_categories)
		return;
	pthread_rwlock_wrlock(&ns->lock);
	old = ns_cat_mode_of(ns, (int)cat_idx);
	__atomic_store_n(&ns->cat_mode[cat_idx], (uint8_t)mode, __ATOMIC_RELAXED);
	if ((old == NS_CAT_UNREADABLE) != (mode == NS_CAT_UNREADABLE))
		repick_category(ns, (int)cat_idx, &invs, &n_invs);
	pthread_rwlock_unlock(&ns->lock);
	for (size_t i = 0; i < n_invs; i++) {
		struct ns_inval iv = { .valid = true, .ino = invs[i] };

		inval_deliver(ns, &iv);
	}
	free(invs);
}

int ns_put_dir(struct ns *ns, size_t cat_idx, const char *path)
{
	int err = 0;

	if (cat_idx >= ns->cfg->n_categories || (*path && !path_is_clean_relative(path)))
		return -EINVAL;
	if (ns_path_hidden(path))
		return 0;
	pthread_rwlock_wrlock(&ns->lock);
	union_dir(ns, cat_idx, path, &err);
	pthread_rwlock_unlock(&ns->lock);
	return err;
}

int ns_put_symlink(struct ns *ns, size_t cat_idx, const char *path)
{
	char dir[PATH_MAX];
	const char *base;
	struct ns_node *d, *l;
	int err = 0;

	if (cat_idx >= ns->cfg->n_categories || !path_is_clean_relative(path))
		return -EINVAL;
	if (ns_path_hidden(path))
		return 0;
	base = split_path(path, dir, sizeof(dir));
	if (!base || !*base)
		return -EINVAL;
	pthread_rwlock_wrlock(&ns->lock);
	d = union_dir(ns, cat_idx, dir, &err);
	if (d && !ns_child_find(ns, d, base)) {
		l = ns_node_new(ns, base, NK_SYMLINK, NA_UNION, (int)cat_idx);
		if (!l) {
			err = -ENOMEM;
		} else {
			l->host = (int16_t)ns->self_host;
			err = ns_node_attach(ns, d, l);
			if (err < 0)
				ns_node_maybe_free(ns, l);
		}
	}
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

	/* This node's replicas of other hosts' files are not files of its data dirs: those
	 * versions come from their producers' entries (catalog_replicas.c). */
	if (h && h == lc->ns->cfg->self && e->origin && strcmp(e->origin, e->host) != 0)
		return 0;
	if (e->path && ns_path_hidden(e->path))
		return 0;
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
