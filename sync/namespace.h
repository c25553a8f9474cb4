/*
 * namespace — the in-memory tree that the mount shows.
 *
 * Layout: / holds one directory per configured category and /.hosts; /.hosts/<host>/<category>
 * shows each host's own versions, read-only. Every node has a FUSE inode number that stays
 * fixed for its lifetime; nodes live in two hash tables (by inode, and by parent + name) and
 * each directory keeps its children in an array ordered by a per-directory cookie, which is
 * the readdir offset, so a listing stays correct while entries come and go.
 *
 * The tree is built from the catalog at start and kept current by the indexer (files
 * published or deleted in the data dirs) and by the write operations below, which act on this
 * node's backing directories first and update the tree after. Lookups and getattr never touch
 * SQLite: a node holds the published version (size, mtime, hash, origin) and, for data that is
 * on this node, attributes come from the backing file itself.
 *
 * /.hosts/<host>/... nodes are made on lookup and freed on forget, so the union tree is the
 * only per-file cost (see docs/architecture.md for the memory budget).
 *
 * The shared-storage probe dir (SHARED_PROBE_DIR, sync/shared.h) at a category root is never
 * shown, from any source, and cannot be made through the mount.
 *
 * Locking: ns->lock (a rwlock) protects the tables and every node field; it is never held
 * across a catalog call, a hook or an invalidation callback. Calls below take and release it
 * themselves; none returns with it held.
 */
#ifndef MESHFS_NAMESPACE_H
#define MESHFS_NAMESPACE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>

#include "sync/catalog.h"
#include "sync/config.h"

#define NS_ROOT_INO 1

struct ns;

/* What a lookup or create hands to the FUSE layer. */
struct ns_entry {
	uint64_t ino;
	struct stat attr;
	bool local;	/* served from this node's storage: short kernel cache timeouts */
};

/* A version that lives on other hosts: what a read must fetch (ns_open gives -EREMOTE). */
struct ns_remote {
	size_t cat_idx;
	char path[4096];	/* relative to the category */
	struct hash128 hash;
	uint64_t size;
	int64_t mtime_ns;
	uint64_t sources;	/* bit i = host i holds these bytes (hosts 0..63) */
};

/* What ns_find_file() found. */
struct ns_found {
	struct ns_remote remote;	/* the version shown (what a fetch of it needs) */
	int host;			/* whose version is shown (this node's index: local) */
	int origin;			/* the host that produced it; -1 if not known */
	int64_t confirmed_at;		/* when its producer last confirmed it */
};

/* Who asks, for ownership of new files. */
struct ns_caller {
	uid_t uid;
	gid_t gid;
	mode_t umask;
};

/* Work the namespace hands back to its owner; called with no namespace lock held. */
struct ns_hooks {
	void (*removed)(void *arg, size_t cat_idx, const char *path);
	void (*renamed)(void *arg, size_t cat_idx, const char *old_path, const char *new_path,
			bool is_dir);
	void (*written)(void *arg, size_t cat_idx, const char *path);
	/* The kernel's cached entry @name in @parent, or the attributes/data of @ino (when
	 * @name is NULL), are out of date. Must not block on FUSE requests. */
	void (*invalidate)(void *arg, uint64_t parent, const char *name, uint64_t ino);
};

/* Everything the xattr and status code needs to know about one node. */
enum ns_state {
	NS_STATE_LOCAL,
	NS_STATE_PASSTHROUGH,
	NS_STATE_REMOTE,
};

struct ns_info {
	bool is_dir;
	bool is_symlink;
	bool is_file;
	bool published;		/* has a catalog version (hash valid) */
	bool read_only;		/* under /.hosts, or another node's data */
	bool is_root;
	enum ns_state state;
	int cat_idx;		/* -1 for /, /.hosts and /.hosts/<host> */
	int host_idx;		/* files: the host whose version is shown */
	uint64_t sources;	/* files: bit i = host i holds these very bytes */
	char origin[64];
	struct hash128 hash;
	uint64_t size;
	int64_t mtime_ns;
	int64_t confirmed_at;
	char path[4096];	/* relative to the category ("" for its root) */
};

/*
 * Builds an empty namespace for @cfg (this node = cfg->self). @hooks may be NULL. Each
 * category's backing directory is config_category_dir(cfg, cfg->self, i); categories under a
 * shared_storage path start passthrough (sync/shared.c then sets what the probe found).
 * Returns 0 or -errno.
 */
int ns_create(const struct mfs_config *cfg, const struct ns_hooks *hooks, void *hook_arg,
	      struct ns **out);
void ns_destroy(struct ns *ns);

/*
 * Looks up the published file at (@cat_idx, @path) of the union tree: the version shown in
 * *out; if @hash and @holders are given, *holders = the hosts (bit per host index < 64) that
 * hold version @hash there, shown or not. Returns 0, -ENOENT (no such published file), -EINVAL.
 */
int ns_find_file(struct ns *ns, size_t cat_idx, const char *path, struct ns_found *out,
		 const struct hash128 *hash, uint64_t *holders);

/* Loads every live entry of this node from @cat. Returns 0 or -errno. */
int ns_load(struct ns *ns, struct catalog *cat);

/* Population from the indexer: a published file, a deleted one, a directory seen or gone. */
int ns_put_file(struct ns *ns, size_t cat_idx, const struct cat_entry *e);
int ns_remove_file(struct ns *ns, size_t cat_idx, const char *path);

/*
 * Population from other hosts' manifests: host @host_idx (index into cfg->hosts) holds version
 * @e at (category, path), or no longer holds anything there. A path held by several hosts
 * shows one version: the greatest mtime_ns, ties to the smallest host name; hosts holding the
 * same bytes are all its sources. ns_remove_host drops everything of a host.
 */
int ns_put_version(struct ns *ns, size_t host_idx, size_t cat_idx, const struct cat_entry *e);
int ns_remove_version(struct ns *ns, size_t host_idx, size_t cat_idx, const char *path);
void ns_remove_host(struct ns *ns, size_t host_idx);
int ns_put_dir(struct ns *ns, size_t cat_idx, const char *path);
/* A symbolic link of this node's data dir (not published; served from the backing link). */
int ns_put_symlink(struct ns *ns, size_t cat_idx, const char *path);
int ns_remove_dir(struct ns *ns, size_t cat_idx, const char *path);

/* Counts of nodes and files in the union tree (for status and the memory benchmark). */
void ns_counts(struct ns *ns, uint64_t *nodes, uint64_t *files, uint64_t *bytes);

/* The backing directory of category @cat_idx on this node (owned by ns). */
const char *ns_category_dir(struct ns *ns, size_t cat_idx);
/* Whether category @cat_idx is served as passthrough now (mode NS_CAT_PASSTHROUGH). No lock. */
bool ns_category_passthrough(struct ns *ns, size_t cat_idx);

/*
 * How this node serves a category. A category on shared storage is passthrough while the
 * storage is healthy (sync/shared.c), else one of the other two; any other category is local.
 */
enum ns_cat_mode {
	NS_CAT_LOCAL,		/* this node's data dir: a normal category, synced */
	NS_CAT_PASSTHROUGH,	/* healthy shared storage: straight through */
	/* Shared storage that cannot be read here (missing, hung): a normal category where,
	 * for a version that other hosts hold too, their copy is shown (fetched on read). */
	NS_CAT_UNREADABLE,
};

/*
 * Sets the mode of category @cat_idx. Going into or out of NS_CAT_UNREADABLE re-picks the
 * shown version of every file of the category held by several hosts (one walk of the tree
 * under the write lock) and invalidates what the kernel holds of those that changed. Takes
 * and drops ns->lock; hooks run after.
 */
void ns_set_category_mode(struct ns *ns, size_t cat_idx, enum ns_cat_mode mode);
enum ns_cat_mode ns_category_mode(struct ns *ns, size_t cat_idx);

/* ---- requests (each returns 0 or -errno) ---- */

/* Finds @name in @parent and counts one kernel reference to it (undone by ns_forget). */
int ns_lookup(struct ns *ns, uint64_t parent, const char *name, struct ns_entry *out);
void ns_forget(struct ns *ns, uint64_t ino, uint64_t nlookup);
int ns_getattr(struct ns *ns, uint64_t ino, struct stat *st);
int ns_info(struct ns *ns, uint64_t ino, struct ns_info *info);

/*
 * Lists @dir from cookie @off: calls @fn for each child with its name, attributes (only
 * st_ino and the type bits of st_mode unless @plus), its inode number (@nodeid; 0 for "."
 * and "..", which take no reference) and the cookie to resume after it, until @fn returns
 * non-zero. With @plus, each child passed to @fn with a non-zero nodeid has gained one kernel
 * reference, as a lookup does, unless @fn returned non-zero for it. "." and ".." come first
 * (cookies 1, 2). One call lists at most one batch; the caller asks again from the last
 * cookie.
 */
typedef int (*ns_dirent_fn)(void *arg, const char *name, const struct stat *st, uint64_t nodeid,
			    off_t next);
int ns_readdir(struct ns *ns, uint64_t dir, off_t off, bool plus, ns_dirent_fn fn, void *arg);

/*
 * Opens the data of @ino with open(2) @flags (O_CREAT/O_EXCL ignored). Returns 0 and an fd
 * in *fd (the caller closes it); *keep_cache is true when the content is unchanged since the
 * previous open, so the kernel's page cache can be kept. Write access to read-only data gives
 * -EROFS. Data that is not on this node gives -EREMOTE and what to fetch in *remote (may be
 * NULL when the caller only opens local data).
 */
int ns_open(struct ns *ns, uint64_t ino, int flags, int *fd, bool *keep_cache,
	    struct ns_remote *remote);
/* An fd from ns_open/ns_create_file is being closed; @writable: it was opened for writing,
 * @wrote: data or size changed through it (the file is then published). */
void ns_release(struct ns *ns, uint64_t ino, bool writable, bool wrote);

int ns_create_file(struct ns *ns, uint64_t parent, const char *name, mode_t mode, int flags,
		   const struct ns_caller *who, int *fd, struct ns_entry *out);
int ns_mknod(struct ns *ns, uint64_t parent, const char *name, mode_t mode, dev_t rdev,
	     const struct ns_caller *who, struct ns_entry *out);
int ns_mkdir(struct ns *ns, uint64_t parent, const char *name, mode_t mode,
	     const struct ns_caller *who, struct ns_entry *out);
int ns_symlink(struct ns *ns, uint64_t parent, const char *name, const char *target,
	       const struct ns_caller *who, struct ns_entry *out);
int ns_link(struct ns *ns, uint64_t ino, uint64_t newparent, const char *newname,
	    struct ns_entry *out);
int ns_unlink(struct ns *ns, uint64_t parent, const char *name);
int ns_rmdir(struct ns *ns, uint64_t parent, const char *name);
/* @flags: RENAME_NOREPLACE / RENAME_EXCHANGE as renameat2(2). */
int ns_rename(struct ns *ns, uint64_t parent, const char *name, uint64_t newparent,
	      const char *newname, unsigned flags);
/* Reads the target of a symlink into a new string. */
int ns_readlink(struct ns *ns, uint64_t ino, char **target);

/* Attribute changes; @to_set uses the NS_SET_* bits; @fd is an open fd or -1. */
enum {
	NS_SET_MODE = 1 << 0,
	NS_SET_UID = 1 << 1,
	NS_SET_GID = 1 << 2,
	NS_SET_SIZE = 1 << 3,
	NS_SET_ATIME = 1 << 4,
	NS_SET_MTIME = 1 << 5,
	NS_SET_ATIME_NOW = 1 << 6,
	NS_SET_MTIME_NOW = 1 << 7,
	NS_SET_CTIME = 1 << 8,
};
int ns_setattr(struct ns *ns, uint64_t ino, const struct stat *st, unsigned to_set, int fd,
	       struct stat *out);

int ns_statfs(struct ns *ns, uint64_t ino, struct statvfs *st);

#endif
