/*
 * namespace_int — what the namespace's two source files share: the node and table structures
 * and the tree primitives. namespace.c builds and keeps the tree (tables, nodes, versions,
 * population from the catalog, the indexer and peers); namespace_ops.c answers the requests of
 * namespace.h on it (attributes, lookup, readdir, open, the write operations). Nothing outside
 * sync/namespace*.c includes this.
 *
 * Every function here expects ns->lock to be held by the caller (for writing when it changes
 * the tree) and never takes it.
 */
#ifndef MESHFS_NAMESPACE_INT_H
#define MESHFS_NAMESPACE_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sync/namespace.h"

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
	uint32_t live;		/* attached + detached ones still holding it as parent */
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
	bool cat_shared[CFG_MAX_CATEGORIES];	/* under a shared_storage path (config) */
	/* enum ns_cat_mode; written under lock (for writing), read with __atomic loads, so
	 * ns_category_passthrough() needs no lock. */
	uint8_t cat_mode[CFG_MAX_CATEGORIES];
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

/* ---- tables and nodes (namespace.c) ---- */

/* The node with inode number @ino, or NULL. */
struct ns_node *ns_ino_find(struct ns *ns, uint64_t ino);
/* Child @name of @parent in the tree, or NULL. */
struct ns_node *ns_child_find(struct ns *ns, const struct ns_node *parent, const char *name);
/* A new detached node with a fresh inode number (in the inode table), or NULL. */
struct ns_node *ns_node_new(struct ns *ns, const char *name, enum ns_kind kind, enum ns_area area,
			    int cat);
/* Frees @n, and what it held, once nothing refers to it any more. */
void ns_node_maybe_free(struct ns *ns, struct ns_node *n);
/* The index of the first child of @d with cookie >= @cookie. */
uint32_t ns_dir_seek(const struct ns_dir *d, uint64_t cookie);
/* Hangs @child under @parent. 0 or -ENOMEM. */
int ns_node_attach(struct ns *ns, struct ns_node *parent, struct ns_node *child);
/* Takes @n out of the tree; it is freed when its last reference goes. */
void ns_node_detach(struct ns *ns, struct ns_node *n);
/* Re-hangs @n under @parent as @name. 0 or -ENOMEM. */
int ns_node_move(struct ns *ns, struct ns_node *n, struct ns_node *parent, const char *name);

/* ---- paths ---- */

/* @n's path relative to its category root ("" for the root). 0 or -errno. */
int ns_node_relpath(const struct ns_node *n, char *buf, size_t size);
/* The backing path of a union (or mirror) node on this node. 0 or -errno. */
int ns_node_backing(struct ns *ns, const struct ns_node *n, char *buf, size_t size);
/* The backing path of @name under union dir @parent. 0 or -errno. */
int ns_child_backing(struct ns *ns, const struct ns_node *parent, const char *name, char *buf,
		     size_t size);

/* ---- versions ---- */

/* Version @i of file @f (0 <= i < its number of versions). */
struct ns_version ns_node_ver(const struct ns_node *f, size_t i);
/* True when @host holds a version at @f; that version in *out (may be NULL). */
bool ns_node_host_version(const struct ns_node *f, int host, struct ns_version *out);
/* Bitmask of the hosts (index < 64) whose version at @f has the bytes @hash. */
uint64_t ns_node_sources(const struct ns_node *f, const struct hash128 *hash);
/* Whether @f is served from this node's own data dir. */
bool ns_node_is_local(const struct ns *ns, const struct ns_node *f);

/* ---- shared storage ---- */

/* The mode of category @cat (enum ns_cat_mode; NS_CAT_LOCAL for cat < 0). */
enum ns_cat_mode ns_cat_mode_of(const struct ns *ns, int cat);
/* True for a path (relative to a category) at or under SHARED_PROBE_DIR: never shown. */
bool ns_path_hidden(const char *rel);

#endif
