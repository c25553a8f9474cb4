/*
 * fuse_ops — the FUSE low-level operations of meshfs.
 *
 * Each handler unpacks its request, calls the namespace (or xattrs), and replies; no handler
 * sleeps on the network. Reads are answered with fuse_reply_data() over the backing fd, so
 * libfuse can splice the data to the kernel without copying it through this process.
 *
 * Kernel caches: entries and attributes are cached for FS_CACHE_TIMEOUT seconds and
 * invalidated explicitly when the namespace changes underneath (a file changed in the data
 * dir, a new version). Invalidations are queued to a thread of their own ("meshfs-inval"),
 * because calling fuse_lowlevel_notify_inval_* from inside a request can deadlock.
 */
#define FUSE_USE_VERSION 314

#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fs/fs.h"
#include "sync/daemon.h"
#include "sync/fetch.h"
#include "sync/log.h"
#include "sync/namespace.h"
#include "sync/xattrs.h"

#define FS_CACHE_TIMEOUT 60.0
#define FS_INVAL_QUEUE_MAX 65536

struct inval_job {
	struct inval_job *next;
	uint64_t parent;
	uint64_t ino;
	char name[]; /* "" for an inode invalidation */
};

struct fs_ctx {
	struct daemon *d;
	struct fuse_session *se;
	bool mounted;

	pthread_t inval_thread;
	bool inval_started;
	pthread_mutex_t inval_lock;
	pthread_cond_t inval_cond;
	/* protected by inval_lock */
	struct inval_job *inval_head, *inval_tail;
	size_t inval_len;
	bool inval_stop;

	/* Open handles, so that fstat() of an unlinked open file can be answered (the kernel
	 * sends GETATTR without a file handle for it). */
	pthread_mutex_t open_lock;
	struct fs_handle *open_list; /* protected by open_lock */
};

/* One open file. */
struct fs_handle {
	int fd;				/* -1 for data fetched from other hosts */
	struct fetch_file *ff;		/* that data */
	uint64_t ino;
	bool writable;
	bool wrote; /* protected by nothing: set by writes, read at release after they end */
	struct fs_handle *prev, *next; /* in fs->open_list, protected by fs->open_lock */
};

static struct fs_ctx *fs_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

static struct ns *ns_of(fuse_req_t req)
{
	return fs_of(req)->d->ns;
}

/* ------------------------------------------------------------------ invalidation */

static void *inval_main(void *arg)
{
	struct fs_ctx *fs = arg;

	pthread_setname_np(pthread_self(), "meshfs-inval");
	pthread_mutex_lock(&fs->inval_lock);
	for (;;) {
		struct inval_job *job;
		int ret;

		while (!fs->inval_head && !fs->inval_stop)
			pthread_cond_wait(&fs->inval_cond, &fs->inval_lock);
		if (fs->inval_stop)
			break;
		job = fs->inval_head;
		fs->inval_head = job->next;
		if (!fs->inval_head)
			fs->inval_tail = NULL;
		fs->inval_len--;
		pthread_mutex_unlock(&fs->inval_lock);

		if (job->name[0])
			ret = fuse_lowlevel_notify_inval_entry(fs->se, job->parent, job->name,
							       strlen(job->name));
		else
			ret = fuse_lowlevel_notify_inval_inode(fs->se, job->ino, 0, 0);
		/* -ENOENT: the kernel had nothing cached; not an error. */
		if (ret < 0 && ret != -ENOENT)
			log_msg(LOG_DEBUG, "invalidate %s: %s", job->name[0] ? job->name : "inode",
				strerror(-ret));
		free(job);
		pthread_mutex_lock(&fs->inval_lock);
	}
	pthread_mutex_unlock(&fs->inval_lock);
	return NULL;
}

/* The namespace's invalidate hook: queue it, never block. */
static void fs_invalidate(void *arg, uint64_t parent, const char *name, uint64_t ino)
{
	struct fs_ctx *fs = arg;
	size_t len = name ? strlen(name) : 0;
	struct inval_job *job;

	if (!fs->mounted)
		return;
	job = malloc(sizeof(*job) + len + 1);
	if (!job)
		return; /* the kernel cache then expires by its timeout */
	job->next = NULL;
	job->parent = parent;
	job->ino = ino;
	memcpy(job->name, name ? name : "", len + 1);
	pthread_mutex_lock(&fs->inval_lock);
	if (fs->inval_len >= FS_INVAL_QUEUE_MAX || fs->inval_stop) {
		pthread_mutex_unlock(&fs->inval_lock);
		free(job);
		return;
	}
	if (fs->inval_tail)
		fs->inval_tail->next = job;
	else
		fs->inval_head = job;
	fs->inval_tail = job;
	fs->inval_len++;
	pthread_cond_signal(&fs->inval_cond);
	pthread_mutex_unlock(&fs->inval_lock);
}

/* ------------------------------------------------------------------ helpers */

static void reply_entry(fuse_req_t req, const struct ns_entry *e)
{
	struct fuse_entry_param p = {
		.ino = e->ino,
		.generation = 1,
		.attr = e->attr,
		.attr_timeout = FS_CACHE_TIMEOUT,
		.entry_timeout = FS_CACHE_TIMEOUT,
	};

	struct ns *ns = ns_of(req); /* req is freed by the reply */

	if (fuse_reply_entry(req, &p) == -ENOENT)
		ns_forget(ns, e->ino, 1); /* the caller was interrupted */
}

static struct ns_caller caller_of(fuse_req_t req)
{
	const struct fuse_ctx *c = fuse_req_ctx(req);
	struct ns_caller who = { .uid = c->uid, .gid = c->gid, .umask = c->umask };

	return who;
}

static struct fs_handle *handle_of(struct fuse_file_info *fi)
{
	return (struct fs_handle *)(uintptr_t)fi->fh;
}

/* ------------------------------------------------------------------ operations */

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	if (conn->capable & FUSE_CAP_SPLICE_WRITE)
		conn->want |= FUSE_CAP_SPLICE_WRITE;
	if (conn->capable & FUSE_CAP_SPLICE_READ)
		conn->want |= FUSE_CAP_SPLICE_READ;
	if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC)
		conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
	if (conn->capable & FUSE_CAP_PARALLEL_DIROPS)
		conn->want |= FUSE_CAP_PARALLEL_DIROPS;
	/* The kernel applies the caller's umask to new files (no FUSE_CAP_DONT_MASK). */
	conn->want &= ~FUSE_CAP_DONT_MASK;
	conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
	conn->max_readahead = conn->max_readahead > (1u << 20) ? conn->max_readahead : (1u << 20);
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct ns_entry e;
	int ret = ns_lookup(ns_of(req), parent, name, &e);

	if (ret < 0)
		fuse_reply_err(req, -ret);
	else
		reply_entry(req, &e);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	ns_forget(ns_of(req), ino, nlookup);
	fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	for (size_t i = 0; i < count; i++)
		ns_forget(ns_of(req), forgets[i].ino, forgets[i].nlookup);
	fuse_reply_none(req);
}

static void handle_track(struct fs_ctx *fs, struct fs_handle *h)
{
	pthread_mutex_lock(&fs->open_lock);
	h->prev = NULL;
	h->next = fs->open_list;
	if (fs->open_list)
		fs->open_list->prev = h;
	fs->open_list = h;
	pthread_mutex_unlock(&fs->open_lock);
}

static void handle_untrack(struct fs_ctx *fs, struct fs_handle *h)
{
	pthread_mutex_lock(&fs->open_lock);
	if (h->prev)
		h->prev->next = h->next;
	else
		fs->open_list = h->next;
	if (h->next)
		h->next->prev = h->prev;
	pthread_mutex_unlock(&fs->open_lock);
}

/* fstat of @fi's fd, or of any open handle of @ino. -ENOENT if none is open. */
static int fstat_open_handle(struct fs_ctx *fs, uint64_t ino, struct fuse_file_info *fi,
			     struct stat *st)
{
	int ret = -ENOENT;

	if (fi && handle_of(fi) && handle_of(fi)->fd >= 0)
		return fstat(handle_of(fi)->fd, st) < 0 ? -errno : 0;
	pthread_mutex_lock(&fs->open_lock);
	for (struct fs_handle *h = fs->open_list; h; h = h->next) {
		if (h->ino == ino && h->fd >= 0) {
			ret = fstat(h->fd, st) < 0 ? -errno : 0;
			break;
		}
	}
	pthread_mutex_unlock(&fs->open_lock);
	return ret;
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct stat st;
	int ret;

	ret = ns_getattr(ns_of(req), ino, &st);
	/* An open file that was unlinked meanwhile still answers from an fd open on it. */
	if (ret == -ENOENT)
		ret = fstat_open_handle(fs_of(req), ino, fi, &st);
	if (ret < 0)
		fuse_reply_err(req, -ret);
	else
		fuse_reply_attr(req, &st, FS_CACHE_TIMEOUT);
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
		       struct fuse_file_info *fi)
{
	static const struct {
		int fuse;
		unsigned ns;
	} map[] = {
		{ FUSE_SET_ATTR_MODE, NS_SET_MODE },
		{ FUSE_SET_ATTR_UID, NS_SET_UID },
		{ FUSE_SET_ATTR_GID, NS_SET_GID },
		{ FUSE_SET_ATTR_SIZE, NS_SET_SIZE },
		{ FUSE_SET_ATTR_ATIME, NS_SET_ATIME },
		{ FUSE_SET_ATTR_MTIME, NS_SET_MTIME },
		{ FUSE_SET_ATTR_ATIME_NOW, NS_SET_ATIME_NOW },
		{ FUSE_SET_ATTR_MTIME_NOW, NS_SET_MTIME_NOW },
		{ FUSE_SET_ATTR_CTIME, NS_SET_CTIME },
	};
	struct fs_handle *h = fi ? handle_of(fi) : NULL;
	unsigned set = 0;
	struct stat out;
	int ret;

	for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
		if (to_set & map[i].fuse)
			set |= map[i].ns;
	ret = ns_setattr(ns_of(req), ino, attr, set, h ? h->fd : -1, &out);
	if (ret < 0) {
		fuse_reply_err(req, -ret);
		return;
	}
	if (h && (set & NS_SET_SIZE))
		h->wrote = true;
	fuse_reply_attr(req, &out, FS_CACHE_TIMEOUT);
}

static void op_readlink(fuse_req_t req, fuse_ino_t ino)
{
	char *target = NULL;
	int ret = ns_readlink(ns_of(req), ino, &target);

	if (ret < 0)
		fuse_reply_err(req, -ret);
	else
		fuse_reply_readlink(req, target);
	free(target);
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		     dev_t rdev)
{
	struct ns_caller who = caller_of(req);
	struct ns_entry e;
	int ret = ns_mknod(ns_of(req), parent, name, mode, rdev, &who, &e);

	if (ret < 0)
		fuse_reply_err(req, -ret);
	else
		reply_entry(req, &e);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	struct ns_caller who = caller_of(req);
	struct ns_entry e;
	int ret = ns_mkdir(ns_of(req), parent, name, mode, &who, &e);

	if (ret < 0)
		fuse_reply_err(req, -ret);
	else
		reply_entry(req, &e);
}

static void op_symlink(fuse_req_t req, const char *target, fuse_ino_t parent, const char *name)
{
	struct ns_caller who = caller_of(req);
	struct ns_entry e;
	int ret = ns_symlink(ns_of(req), parent, name, target, &who, &e);

	if (ret < 0)
		fuse_reply_err(req, -ret);
	else
		reply_entry(req, &e);
}

static void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
	struct fs_ctx *fs = fs_of(req);
	struct ns_entry e;
	int ret = ns_link(ns_of(req), ino, newparent, newname, &e);

	if (ret < 0) {
		fuse_reply_err(req, -ret);
		return;
	}
	/*
	 * The new name is a node of its own, so the kernel would keep showing the old name's
	 * link count from its cache. Its attributes are dropped here, before the reply, so the
	 * stat that follows link() already asks again. This breaks the rule of invalidating
	 * only from the meshfs-inval thread on purpose: an attributes-only invalidation
	 * (offset -1) never blocks without writeback caching (libfuse's fuse_lowlevel.h), so it
	 * cannot deadlock against the link in progress, and a queued one would race the caller.
	 */
	fuse_lowlevel_notify_inval_inode(fs->se, ino, -1, 0);
	reply_entry(req, &e);
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	fuse_reply_err(req, -ns_unlink(ns_of(req), parent, name));
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	fuse_reply_err(req, -ns_rmdir(ns_of(req), parent, name));
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
		      const char *newname, unsigned int flags)
{
	fuse_reply_err(req, -ns_rename(ns_of(req), parent, name, newparent, newname, flags));
}

static void reply_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi, int fd,
		       bool keep_cache)
{
	struct fs_handle *h = calloc(1, sizeof(*h));

	if (!h) {
		close(fd);
		fuse_reply_err(req, ENOMEM);
		return;
	}
	h->fd = fd;
	h->ino = ino;
	h->writable = (fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC);
	h->wrote = (fi->flags & O_TRUNC) != 0;
	fi->fh = (uint64_t)(uintptr_t)h;
	fi->keep_cache = keep_cache;
	fi->noflush = !h->writable;
	handle_track(fs_of(req), h);
}

static void handle_free(struct fs_ctx *fs, struct fs_handle *h)
{
	handle_untrack(fs, h);
	if (h->fd >= 0)
		close(h->fd);
	fetch_close(h->ff);
	free(h);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fetch_file *ff = NULL;
	struct ns_remote *remote;
	bool keep_cache = false;
	int fd = -1, ret;

	/* struct ns_remote carries a PATH_MAX path: keep it off the FUSE thread's stack. */
	remote = malloc(sizeof(*remote));
	if (!remote) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	ret = ns_open(ns_of(req), ino, fi->flags, &fd, &keep_cache, remote);
	if (ret == -EREMOTE) {
		/* Another host's version: reads come through the fetcher, for this version
		 * only, whatever is published later. The kernel's cached pages are dropped when
		 * the shown version changes, so they can be kept across opens. */
		ret = fs_of(req)->d->fetch ? fetch_open(fs_of(req)->d->fetch, remote, &ff) : -EIO;
		keep_cache = true;
	}
	free(remote);
	if (ret < 0) {
		fuse_reply_err(req, -ret == EREMOTE ? EIO : -ret);
		return;
	}
	reply_open(req, ino, fi, fd, keep_cache);
	if (!fi->fh) {
		fetch_close(ff);
		return;
	}
	handle_of(fi)->ff = ff;
	struct fs_ctx *fs = fs_of(req); /* req is freed by the reply */

	if (fuse_reply_open(req, fi) == -ENOENT) {
		struct fs_handle *h = handle_of(fi);

		ns_release(fs->d->ns, ino, h->writable, false);
		handle_free(fs, h);
	}
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		      struct fuse_file_info *fi)
{
	struct ns_caller who = caller_of(req);
	struct fuse_entry_param p;
	struct ns_entry e;
	int fd = -1, ret;

	ret = ns_create_file(ns_of(req), parent, name, mode, fi->flags, &who, &fd, &e);
	if (ret < 0) {
		fuse_reply_err(req, -ret);
		return;
	}
	struct ns *ns = ns_of(req); /* reply_open may answer (and free) req */

	reply_open(req, e.ino, fi, fd, false);
	if (!fi->fh) {
		ns_forget(ns, e.ino, 1);
		return;
	}
	handle_of(fi)->wrote = true; /* a new file is published at close even if empty */
	memset(&p, 0, sizeof(p));
	p.ino = e.ino;
	p.generation = 1;
	p.attr = e.attr;
	p.attr_timeout = FS_CACHE_TIMEOUT;
	p.entry_timeout = FS_CACHE_TIMEOUT;
	struct fs_ctx *fs = fs_of(req); /* req is freed by the reply */

	if (fuse_reply_create(req, &p, fi) == -ENOENT) {
		struct fs_handle *h = handle_of(fi);

		ns_release(fs->d->ns, e.ino, h->writable, true);
		ns_forget(fs->d->ns, e.ino, 1);
		handle_free(fs, h);
	}
}

static void reply_from_fd(fuse_req_t req, int fd, off_t off, size_t size)
{
	struct fuse_bufvec buf = FUSE_BUFVEC_INIT(size);

	buf.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
	buf.buf[0].fd = fd;
	buf.buf[0].pos = off;
	fuse_reply_data(req, &buf, FUSE_BUF_SPLICE_MOVE);
}

/* A parked read is answered, on the fetch thread. */
static void read_done(void *cookie, int err, int fd, const void *buf, uint64_t off, size_t len)
{
	fuse_req_t req = cookie;

	if (err < 0)
		fuse_reply_err(req, EIO); /* the detail is in user.meshfs.last_error */
	else if (buf)
		fuse_reply_buf(req, buf, len);
	else
		reply_from_fd(req, fd, (off_t)off, len);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	struct fs_handle *h = handle_of(fi);
	int fd = -1, ret;

	if (!h->ff) {
		reply_from_fd(req, h->fd, off, size);
		return;
	}
	ret = fetch_read(h->ff, (uint64_t)off, size, read_done, req, &fd);
	if (ret == 0 && fd < 0)
		fuse_reply_buf(req, NULL, 0); /* past the end of a version not cached at all */
	else if (ret == 0)
		reply_from_fd(req, fd, off, size);
	else if (ret != -EINPROGRESS)
		fuse_reply_err(req, EIO);
	/* -EINPROGRESS: parked; read_done answers it. */
}

static void op_write_buf(fuse_req_t req, fuse_ino_t ino, struct fuse_bufvec *in, off_t off,
			 struct fuse_file_info *fi)
{
	struct fs_handle *h = handle_of(fi);
	struct fuse_bufvec out = FUSE_BUFVEC_INIT(fuse_buf_size(in));
	ssize_t n;

	out.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
	out.buf[0].fd = h->fd;
	out.buf[0].pos = off;
	n = fuse_buf_copy(&out, in, 0);
	if (n < 0) {
		fuse_reply_err(req, (int)-n);
		return;
	}
	h->wrote = true;
	fuse_reply_write(req, (size_t)n);
}

static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	/* close() of a duplicate makes network filesystems (passthrough on NFS) report
	 * write-back errors here, where the application's close() can see them. */
	int fd = handle_of(fi)->fd >= 0 ? dup(handle_of(fi)->fd) : -1;

	fuse_reply_err(req, fd >= 0 && close(fd) < 0 ? errno : 0);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs_handle *h = handle_of(fi);
	bool writable = h->writable, wrote = h->wrote;

	handle_free(fs_of(req), h);
	ns_release(ns_of(req), ino, writable, wrote);
	fuse_reply_err(req, 0);
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	int fd = handle_of(fi)->fd;
	int ret = fd < 0 ? 0 : datasync ? fdatasync(fd) : fsync(fd);

	fuse_reply_err(req, ret < 0 ? errno : 0);
}

struct dir_fill {
	fuse_req_t req;
	char *buf;
	size_t size;
	size_t used;
	bool plus;
};

static int dir_add(void *arg, const char *name, const struct stat *st, uint64_t nodeid,
		   off_t next)
{
	struct dir_fill *f = arg;
	size_t need;

	if (f->plus) {
		struct fuse_entry_param p = {
			.ino = nodeid,
			.generation = 1,
			.attr = *st,
			.attr_timeout = FS_CACHE_TIMEOUT,
			.entry_timeout = FS_CACHE_TIMEOUT,
		};

		need = fuse_add_direntry_plus(f->req, f->buf + f->used, f->size - f->used, name,
					      &p, next);
	} else {
		need = fuse_add_direntry(f->req, f->buf + f->used, f->size - f->used, name, st,
					 next);
	}
	if (need > f->size - f->used)
		return 1;
	f->used += need;
	return 0;
}

static void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, bool plus)
{
	struct dir_fill f = { .req = req, .size = size, .plus = plus };
	int ret;

	f.buf = malloc(size);
	if (!f.buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	ret = ns_readdir(ns_of(req), ino, off, plus, dir_add, &f);
	if (ret < 0)
		fuse_reply_err(req, -ret);
	else
		fuse_reply_buf(req, f.buf, f.used);
	free(f.buf);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	do_readdir(req, ino, size, off, false);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			   struct fuse_file_info *fi)
{
	do_readdir(req, ino, size, off, true);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct statvfs st;
	int ret = ns_statfs(ns_of(req), ino, &st);

	if (ret < 0)
		fuse_reply_err(req, -ret);
	else
		fuse_reply_statfs(req, &st);
}

static void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
			size_t size, int flags)
{
	fuse_reply_err(req, -xattr_set(fs_of(req)->d, ino, name, value, size));
}

static void reply_xattr_value(fuse_req_t req, int ret, const char *value, size_t len,
			      size_t size)
{
	if (ret < 0)
		fuse_reply_err(req, -ret);
	else if (size == 0)
		fuse_reply_xattr(req, len);
	else if (len > size)
		fuse_reply_err(req, ERANGE);
	else
		fuse_reply_buf(req, value, len);
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	char *value = NULL;
	size_t len = 0;
	int ret = xattr_get(fs_of(req)->d, ino, name, &value, &len);

	reply_xattr_value(req, ret, value, len, size);
	free(value);
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	char *names = NULL;
	size_t len = 0;
	int ret = xattr_list(fs_of(req)->d, ino, &names, &len);

	reply_xattr_value(req, ret, names, len, size);
	free(names);
}

static void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	fuse_reply_err(req, strncmp(name, "user.meshfs.", 12) == 0 ? EPERM : ENOTSUP);
}

static const struct fuse_lowlevel_ops meshfs_ops = {
	.init = op_init,
	.lookup = op_lookup,
	.forget = op_forget,
	.forget_multi = op_forget_multi,
	.getattr = op_getattr,
	.setattr = op_setattr,
	.readlink = op_readlink,
	.mknod = op_mknod,
	.mkdir = op_mkdir,
	.symlink = op_symlink,
	.link = op_link,
	.unlink = op_unlink,
	.rmdir = op_rmdir,
	.rename = op_rename,
	.open = op_open,
	.create = op_create,
	.read = op_read,
	.write_buf = op_write_buf,
	.flush = op_flush,
	.release = op_release,
	.fsync = op_fsync,
	.readdir = op_readdir,
	.readdirplus = op_readdirplus,
	.statfs = op_statfs,
	.setxattr = op_setxattr,
	.getxattr = op_getxattr,
	.listxattr = op_listxattr,
	.removexattr = op_removexattr,
};

/* ------------------------------------------------------------------ session */

int fs_new(struct daemon *d, const char *fuse_opts, struct fs_ctx **out)
{
	struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
	struct fs_ctx *fs = calloc(1, sizeof(*fs));
	char opts[1024];
	int ret = -EINVAL;

	if (!fs)
		return -ENOMEM;
	fs->d = d;
	pthread_mutex_init(&fs->inval_lock, NULL);
	pthread_cond_init(&fs->inval_cond, NULL);
	pthread_mutex_init(&fs->open_lock, NULL);
	snprintf(opts, sizeof(opts), "allow_other,default_permissions,fsname=meshfs:%s,"
		 "subtype=meshfs%s%s", d->cfg->node, fuse_opts && *fuse_opts ? "," : "",
		 fuse_opts ? fuse_opts : "");
	if (fuse_opt_add_arg(&args, "meshfs") || fuse_opt_add_arg(&args, "-o") ||
	    fuse_opt_add_arg(&args, opts)) {
		ret = -ENOMEM;
		goto fail;
	}
	fs->se = fuse_session_new(&args, &meshfs_ops, sizeof(meshfs_ops), fs);
	if (!fs->se) {
		log_msg(LOG_ERR, "fuse: cannot create a session with options '%s'", opts);
		goto fail;
	}
	if (fuse_set_signal_handlers(fs->se) != 0) {
		log_msg(LOG_ERR, "fuse: cannot install signal handlers");
		goto fail;
	}
	if (pthread_create(&fs->inval_thread, NULL, inval_main, fs) != 0) {
		ret = -EAGAIN;
		goto fail;
	}
	fs->inval_started = true;
	d->invalidate = fs_invalidate;
	d->invalidate_arg = fs;
	fuse_opt_free_args(&args);
	*out = fs;
	return 0;
fail:
	fuse_opt_free_args(&args);
	fs_destroy(fs);
	return ret;
}

int fs_mount(struct fs_ctx *fs, const char *mountpoint)
{
	if (fuse_session_mount(fs->se, mountpoint) != 0)
		return -EIO;
	fs->mounted = true;
	return 0;
}

int fs_loop(struct fs_ctx *fs)
{
	struct fuse_loop_config *cfg = fuse_loop_cfg_create();
	int ret;

	if (!cfg)
		return -ENOMEM;
	fuse_loop_cfg_set_clone_fd(cfg, 0);
	fuse_loop_cfg_set_max_threads(cfg, 16);
	fuse_loop_cfg_set_idle_threads(cfg, 8);
	ret = fuse_session_loop_mt(fs->se, cfg);
	fuse_loop_cfg_destroy(cfg);
	/* A signal ends the loop with the signal number; that is the clean way out. */
	return ret < 0 ? ret : 0;
}

void fs_destroy(struct fs_ctx *fs)
{
	if (!fs)
		return;
	if (fs->d && fs->d->invalidate_arg == fs) {
		fs->d->invalidate = NULL;
		fs->d->invalidate_arg = NULL;
	}
	if (fs->inval_started) {
		pthread_mutex_lock(&fs->inval_lock);
		fs->inval_stop = true;
		pthread_cond_signal(&fs->inval_cond);
		pthread_mutex_unlock(&fs->inval_lock);
		pthread_join(fs->inval_thread, NULL);
	}
	while (fs->inval_head) {
		struct inval_job *next = fs->inval_head->next;

		free(fs->inval_head);
		fs->inval_head = next;
	}
	if (fs->se) {
		if (fs->mounted)
			fuse_session_unmount(fs->se);
		fuse_remove_signal_handlers(fs->se);
		fuse_session_destroy(fs->se);
	}
	pthread_mutex_destroy(&fs->inval_lock);
	pthread_cond_destroy(&fs->inval_cond);
	pthread_mutex_destroy(&fs->open_lock);
	free(fs);
}
