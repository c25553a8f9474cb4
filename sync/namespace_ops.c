/*
 * namespace_ops — the requests of namespace.h, answered on the tree that namespace.c keeps.
 *
 * Each request copies what it needs from its node under ns->lock (struct node_snap: kind,
 * version shown, backing path), drops the lock, and only then makes syscalls on the backing
 * files; changes act on the backing directory first and update the tree after the syscall
 * succeeded, so a failed operation leaves the namespace as it was. Hooks (catalog updates,
 * publication) run with no lock held.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sync/log.h"
#include "sync/namespace.h"
#include "sync/namespace_int.h"
#include "sync/util.h"

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
	return n->area != NA_UNION || !ns_node_is_local(ns, n);
}

/* The version a node shows: a mirror node shows its host's version of the union file. */
static bool shown_version(const struct ns *ns, const struct ns_node *n, struct ns_version *v)
{
	const struct ns_node *u = n->area == NA_MIRROR ? n->alias : n;

	if (!u || u->kind != NK_FILE || !(u->flags & NF_PUBLISHED))
		return false;
	if (n->area == NA_MIRROR)
		return ns_node_host_version(u, n->host, v);
	*v = ns_node_ver(u, 0);
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
	s->sources = have && u ? ns_node_sources(u, &v.hash) : 0;
	s->remote = have && v.host != ns->self_host;
	/* A detached node's old path may name another file by now. */
	s->detached = !(n->flags & NF_ATTACHED) || (u && !(u->flags & NF_ATTACHED));
	s->has_backing = false;
	if (u && u->area == NA_UNION && !s->detached) {
		if (s->remote)
			ns_node_relpath(u, s->path, sizeof(s->path));
		else
			s->has_backing = ns_node_backing(ns, u, s->path, sizeof(s->path)) == 0;
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
	n = ns_ino_find(ns, ino);
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
	n = ns_ino_find(ns, ino);
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
	if (ns_cat_mode_of(ns, n->cat) == NS_CAT_PASSTHROUGH)
		info->state = NS_STATE_PASSTHROUGH;
	else
		info->state = NS_STATE_LOCAL;
	if (u && u->area == NA_UNION)
		ns_node_relpath(u, info->path, sizeof(info->path));
	if (shown_version(ns, n, &v)) {
		info->published = true;
		info->hash = v.hash;
		info->size = v.size;
		info->mtime_ns = v.mtime_ns;
		info->confirmed_at = v.confirmed_at;
		info->host_idx = v.host;
		info->sources = ns_node_sources(u, &v.hash);
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
	struct ns_node *m = ns_child_find(ns, parent, u->name);

	if (m && m->alias == u)
		return m;
	if (m)
		ns_node_detach(ns, m); /* the union node it showed was replaced */
	m = ns_node_new(ns, u->name, u->kind, NA_MIRROR, u->cat);
	if (!m)
		return NULL;
	m->alias = u;
	u->refs++;
	m->host = parent->host;
	m->flags |= NF_LAZY;
	if (ns_node_attach(ns, parent, m) < 0) {
		ns_node_maybe_free(ns, m);
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
		return ns_node_host_version(u, parent->host, NULL);
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
		return ns_child_find(ns, parent, name);
	u = ns_child_find(ns, parent->alias, name);
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
	p = ns_ino_find(ns, parent);
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
		ns_node_detach(ns, n);
	else
		ns_node_maybe_free(ns, n);
}

void ns_forget(struct ns *ns, uint64_t ino, uint64_t nlookup)
{
	struct ns_node *n;

	if (ino == NS_ROOT_INO)
		return;
	pthread_rwlock_wrlock(&ns->lock);
	n = ns_ino_find(ns, ino);
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
	d = ns_ino_find(ns, dir);
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
		for (i = ns_dir_seek(src->dir, (uint64_t)off + 1);
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
	n = ns_ino_find(ns, ino);
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
	n = ns_ino_find(ns, ino);
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
	n = ns_ino_find(ns, ino);
	if (n && writable && n->open_writers > 0)
		n->open_writers--;
	if (n && wrote) {
		n->flags &= ~NF_OPENED;
		if ((n->flags & NF_ATTACHED) && n->area == NA_UNION && n->open_writers == 0 &&
		    ns_node_relpath(n, rel, sizeof(rel)) == 0)
			cat = n->cat;
	}
	pthread_rwlock_unlock(&ns->lock);
	if (cat >= 0 && ns->hooks.written)
		ns->hooks.written(ns->hook_arg, (size_t)cat, rel);
}

/* ------------------------------------------------------------------ changes */

/*
 * Resolves @parent for a change: it must be a writable union directory. Copies the backing
 * path of @name under it into @path. Takes and drops the lock. The probe dir of shared
 * storage is reserved (-EPERM), and the missing dir of a category on shared storage is never
 * made here (-EROFS): it would be a local dir where the shared mount belongs.
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
	p = ns_ino_find(ns, parent);
	if (!p)
		ret = -ENOENT;
	else if (p->kind != NK_DIR)
		ret = -ENOTDIR;
	else if (node_read_only(ns, p))
		ret = -EROFS;
	else
		ret = ns_child_backing(ns, p, name, path, size);
	if (ret == 0 && p->cat >= 0 && p == ns->cat_roots[p->cat] && ns_path_hidden(name))
		ret = -EPERM;
	if (ret == 0) {
		struct ns_node *c = ns_child_find(ns, p, name);

		*cat = p->cat;
		/* Another host's file is read-only here, whatever the operation. */
		if (c && c->kind == NK_FILE && !ns_node_is_local(ns, c))
			ret = -EROFS;
	}
	pthread_rwlock_unlock(&ns->lock);
	if (ret == 0) {
		/* The directory may exist only on other hosts so far (or, for a category root,
		 * nowhere yet): what is written here is created in this node's data dir. */
		char *slash = strrchr(path, '/');
		struct stat st;

		*slash = '\0';
		if (lstat(path, &st) < 0 && errno == ENOENT) {
			if (ns->cat_shared[*cat] && stat(ns->cat_dirs[*cat], &st) < 0)
				ret = -EROFS;
			else
				ret = mkdir_p(path, 0755);
		}
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
	p = ns_ino_find(ns, parent);
	if (!p || !(p->flags & NF_ATTACHED)) {
		ret = -ENOENT;
		goto out;
	}
	n = ns_child_find(ns, p, name);
	if (n && n->kind != kind) {
		ns_node_detach(ns, n);
		n = NULL;
	}
	if (!n) {
		n = ns_node_new(ns, name, kind, NA_UNION, p->cat);
		if (!n) {
			ret = -ENOMEM;
			goto out;
		}
		n->host = (int16_t)ns->self_host;
		ret = ns_node_attach(ns, p, n);
		if (ret < 0) {
			ns_node_maybe_free(ns, n);
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
		struct ns_node *n = ns_ino_find(ns, out->ino);

		ret = n ? ns_node_relpath(n, rel, sizeof(rel)) : -ENOENT;
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
	n = ns_ino_find(ns, ino);
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
	n = ns_ino_find(ns, out->ino);
	ret = n ? ns_node_relpath(n, rel, sizeof(rel)) : -ENOENT;
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
	p = ns_ino_find(ns, parent);
	n = p ? ns_child_find(ns, p, name) : NULL;
	if (n && dir != (n->kind == NK_DIR))
		ret = dir ? -ENOTDIR : -EISDIR;
	pthread_rwlock_unlock(&ns->lock);
	if (ret < 0)
		return ret;
	if ((dir ? rmdir(path) : unlink(path)) < 0)
		return -errno;

	pthread_rwlock_wrlock(&ns->lock);
	p = ns_ino_find(ns, parent);
	n = p ? ns_child_find(ns, p, name) : NULL;
	if (n) {
		published = n->flags & NF_PUBLISHED;
		if (ns_node_relpath(n, rel, sizeof(rel)) < 0)
			published = false;
		ns_node_detach(ns, n);
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
	p = ns_ino_find(ns, parent);
	np = ns_ino_find(ns, newparent);
	src = p ? ns_child_find(ns, p, name) : NULL;
	dst = np ? ns_child_find(ns, np, newname) : NULL;
	if (!src || !np || src == dst)
		goto unlock;
	is_dir = src->kind == NK_DIR;
	ns_node_relpath(src, old_rel, sizeof(old_rel));
	if (dst) {
		dst->refs++;
		ns_node_detach(ns, dst);
	}
	if (ns_node_move(ns, src, np, newname) < 0)
		log_msg(LOG_ERR, "namespace: out of memory moving %s", old_rel);
	ns_node_relpath(src, new_rel, sizeof(new_rel));
	moved = true;
	if (dst) {
		/* Exchanged: the old target takes the source's place. Otherwise it was
		 * replaced and stays detached for as long as the kernel holds it. */
		if ((flags & RENAME_EXCHANGE) && ns_node_move(ns, dst, p, name) == 0)
			exchanged = true;
		dst->refs--;
		ns_node_maybe_free(ns, dst);
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
	n = ns_ino_find(ns, ino);
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
	n = ns_ino_find(ns, ino);
	if (n) {
		snap_node(ns, n, &s);
		if (ns_node_relpath(n, rel, sizeof(rel)) < 0)
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
	n = ns_ino_find(ns, ino);
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
