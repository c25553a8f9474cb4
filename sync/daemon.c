/*
 * daemon — start and stop of one meshfs node, and the glue between its subsystems.
 *
 * The namespace reports what the mount changed through ns_hooks, which land in the indexer
 * (catalog updates) and in fs/ (kernel invalidations); the indexer reports what changed on
 * disk through indexer_ops, which land in the namespace. Neither module knows the other.
 */
#include "sync/daemon.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "sync/autosync.h"
#include "sync/cache.h"
#include "sync/control.h"
#include "sync/dataserver.h"
#include "sync/fetch.h"
#include "sync/peers.h"
#include "sync/log.h"
#include "sync/shared.h"
#include "sync/util.h"

/* ---- namespace -> indexer / fs ---- */

static void hook_removed(void *arg, size_t cat, const char *path)
{
	struct daemon *d = arg;

	if (d->indexer)
		indexer_removed(d->indexer, cat, path);
}

static void hook_renamed(void *arg, size_t cat, const char *old_path, const char *new_path,
			 bool is_dir)
{
	struct daemon *d = arg;

	if (d->indexer)
		indexer_renamed(d->indexer, cat, old_path, new_path, is_dir);
}

static void hook_written(void *arg, size_t cat, const char *path)
{
	struct daemon *d = arg;

	if (d->indexer)
		indexer_publish_now(d->indexer, cat, path);
}

static void hook_invalidate(void *arg, uint64_t parent, const char *name, uint64_t ino)
{
	struct daemon *d = arg;

	if (d->invalidate)
		d->invalidate(d->invalidate_arg, parent, name, ino);
}

static const struct ns_hooks daemon_ns_hooks = {
	.removed = hook_removed,
	.renamed = hook_renamed,
	.written = hook_written,
	.invalidate = hook_invalidate,
};

/* AutoSync starts after the peers thread, which may already be calling these. */
static struct autosync *autosync_of(struct daemon *d)
{
	return __atomic_load_n(&d->autosync, __ATOMIC_ACQUIRE);
}

/* ---- indexer -> namespace ---- */

static void ix_published(void *arg, size_t cat, const struct cat_entry *e)
{
	struct daemon *d = arg;
	int ret = ns_put_file(d->ns, cat, e);

	if (ret < 0)
		log_msg(LOG_WARNING, "namespace: cannot show %s/%s: %s",
			d->cfg->categories[cat].name, e->path, strerror(-ret));
	if (d->peers)
		peers_announce(d->peers, e->seq);
	autosync_kick(autosync_of(d));
}

static void ix_deleted(void *arg, size_t cat, const char *path)
{
	struct daemon *d = arg;
	int64_t seq = 0;

	ns_remove_file(d->ns, cat, path);
	if (d->peers && catalog_max_seq(d->catalog, d->cfg->node, &seq) == 0)
		peers_announce(d->peers, seq);
	autosync_kick(autosync_of(d));
}

static void ix_dir_seen(void *arg, size_t cat, const char *path)
{
	struct daemon *d = arg;

	ns_put_dir(d->ns, cat, path);
}

static void ix_dir_gone(void *arg, size_t cat, const char *path)
{
	struct daemon *d = arg;

	ns_remove_dir(d->ns, cat, path);
}

/* ---- peers -> namespace ---- */


static void peer_put(void *arg, size_t host, size_t cat, const struct cat_entry *e)
{
	struct daemon *d = arg;
	int ret = ns_put_version(d->ns, host, cat, e);

	autosync_kick(autosync_of(d));
	if (ret < 0)
		log_msg(LOG_WARNING, "namespace: cannot show %s/%s of %s: %s",
			d->cfg->categories[cat].name, e->path, d->cfg->hosts[host].name,
			strerror(-ret));
}

static void peer_delete(void *arg, size_t host, size_t cat, const char *path)
{
	struct daemon *d = arg;

	ns_remove_version(d->ns, host, cat, path);
	autosync_kick(autosync_of(d));
}

static void peer_reset(void *arg, size_t host)
{
	struct daemon *d = arg;

	ns_remove_host(d->ns, host);
	autosync_kick(autosync_of(d));
}

static const struct peers_ops daemon_peers_ops = {
	.remote_put = peer_put,
	.remote_delete = peer_delete,
	.host_reset = peer_reset,
};

static void ix_symlink_seen(void *arg, size_t cat, const char *path)
{
	struct daemon *d = arg;

	ns_put_symlink(d->ns, cat, path);
}

static const struct indexer_ops daemon_ix_ops = {
	.symlink_seen = ix_symlink_seen,
	.published = ix_published,
	.deleted = ix_deleted,
	.dir_seen = ix_dir_seen,
	.dir_gone = ix_dir_gone,
};

/* ---- state dir ---- */

int daemon_lock_state_dir(const struct mfs_config *cfg, int *lock_fd, char *err, size_t errlen)
{
	char *path = NULL, pidbuf[32];
	int fd = -1, ret;
	ssize_t n;

	ret = mkdir_p(cfg->state_dir, 0755);
	if (ret < 0) {
		snprintf(err, errlen, "state dir %s: cannot create it: %s", cfg->state_dir,
			 strerror(-ret));
		goto out;
	}
	if (access(cfg->state_dir, W_OK | X_OK) < 0) {
		ret = -errno;
		snprintf(err, errlen, "state dir %s is not writable: %s", cfg->state_dir,
			 strerror(errno));
		goto out;
	}
	path = path_join(cfg->state_dir, "lock");
	if (!path) {
		ret = -ENOMEM;
		goto out;
	}
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0) {
		ret = -errno;
		snprintf(err, errlen, "state dir %s is not writable: %s: %s", cfg->state_dir,
			 path, strerror(errno));
		goto out;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		ret = errno == EWOULDBLOCK ? -EBUSY : -errno;
		n = pread(fd, pidbuf, sizeof(pidbuf) - 1, 0);
		pidbuf[n > 0 ? n : 0] = '\0';
		snprintf(err, errlen,
			 "another meshfs daemon (pid %s) is using state dir %s; stop it first or "
			 "give this node its own state_dir",
			 pidbuf[0] ? str_strip(pidbuf) : "unknown", cfg->state_dir);
		goto out;
	}
	n = snprintf(pidbuf, sizeof(pidbuf), "%d\n", (int)getpid());
	if (ftruncate(fd, 0) < 0 || pwrite(fd, pidbuf, n, 0) != n) {
		ret = -errno;
		snprintf(err, errlen, "state dir %s: cannot write %s: %s", cfg->state_dir, path,
			 strerror(errno));
		goto out;
	}
	*lock_fd = fd;
	fd = -1;
	ret = 0;
out:
	if (fd >= 0)
		close(fd);
	free(path);
	return ret;
}

/* Refuses a catalog that was made for another node: its entries would be published under
 * the wrong name. */
static int check_catalog_owner(struct daemon *d, char *err, size_t errlen)
{
	char *owner = NULL;
	int ret = catalog_meta_get(d->catalog, "node", &owner);

	if (ret == -ENOENT || (ret == 0 && !owner))
		return catalog_meta_set(d->catalog, "node", d->cfg->node);
	if (ret < 0)
		return ret;
	if (strcmp(owner, d->cfg->node) != 0) {
		snprintf(err, errlen,
			 "state dir %s belongs to node '%s', not '%s'; give each node its own "
			 "state_dir",
			 d->cfg->state_dir, owner, d->cfg->node);
		ret = -EINVAL;
	}
	free(owner);
	return ret;
}

int daemon_start(const struct mfs_config *cfg, int lock_fd, struct daemon **out, char *err,
		 size_t errlen)
{
	struct daemon *d = calloc(1, sizeof(*d));
	char *db = NULL;
	int ret;

	if (!d)
		return -ENOMEM;
	d->cfg = cfg;
	d->lock_fd = lock_fd;
	d->started_at = now_s();
	err[0] = '\0';

	db = path_join(cfg->state_dir, "catalog.db");
	if (!db) {
		ret = -ENOMEM;
		goto fail;
	}
	ret = catalog_open(db, &d->catalog);
	if (ret < 0) {
		snprintf(err, errlen, "catalog %s: cannot open: %s", db, strerror(-ret));
		goto fail;
	}
	ret = check_catalog_owner(d, err, errlen);
	if (ret < 0)
		goto fail;
	ret = cache_open(cfg, d->catalog, &d->cache);
	if (ret < 0) {
		snprintf(err, errlen, "cache in %s/cache: %s", cfg->state_dir, strerror(-ret));
		goto fail;
	}
	ret = ns_create(cfg, &daemon_ns_hooks, d, &d->ns);
	if (ret < 0) {
		snprintf(err, errlen, "namespace: %s", strerror(-ret));
		goto fail;
	}
	ret = ns_load(d->ns, d->catalog);
	if (ret < 0) {
		snprintf(err, errlen, "namespace: cannot load catalog %s: %s", db, strerror(-ret));
		goto fail;
	}
	ret = indexer_start(cfg, d->catalog, &daemon_ix_ops, d, 0, &d->indexer);
	if (ret < 0) {
		snprintf(err, errlen, "indexer: %s", strerror(-ret));
		goto fail;
	}
	ret = peers_start(cfg, d->catalog, &daemon_peers_ops, d, 0, &d->peers);
	if (ret < 0) {
		snprintf(err, errlen, "peers: %s", strerror(-ret));
		goto fail;
	}
	/* Before anything reads or syncs: an unhealthy shared storage is not passed through. */
	ret = shared_start(cfg, d->ns, d->peers, NULL, &d->shared);
	if (ret < 0) {
		snprintf(err, errlen, "shared storage: %s", strerror(-ret));
		goto fail;
	}
	ret = fetch_start(cfg, d->cache, d->peers, &d->fetch);
	if (ret < 0) {
		snprintf(err, errlen, "fetch: %s", strerror(-ret));
		goto fail;
	}
	{
		struct autosync *a = NULL;

		ret = autosync_start(d, &a);
		if (ret < 0) {
			snprintf(err, errlen, "autosync: %s", strerror(-ret));
			goto fail;
		}
		__atomic_store_n(&d->autosync, a, __ATOMIC_RELEASE);
		fetch_set_complete_hook(d->fetch, autosync_fetch_complete, a);
	}
	ret = dataserver_start(d, &d->server);
	if (ret < 0) {
		snprintf(err, errlen, "data server: cannot listen on %s:%d: %s%s", cfg->listen_host,
			 cfg->listen_port, strerror(-ret),
			 ret == -EADDRINUSE ? " (another meshfs or another service has that port; "
					      "set listen or data_server_port)" : "");
		goto fail;
	}
	{
		/* Listening: say hello, so that peers that gave up on this node while it was away
		 * (an open circuit) ask it again at once. */
		int64_t seq = 0;

		if (catalog_max_seq(d->catalog, cfg->node, &seq) == 0)
			peers_announce(d->peers, seq);
	}
	ret = control_start(d, &d->control);
	if (ret < 0) {
		snprintf(err, errlen, "control socket in %s: %s", cfg->state_dir, strerror(-ret));
		goto fail;
	}
	free(db);
	*out = d;
	return 0;
fail:
	free(db);
	d->lock_fd = -1; /* the caller still owns it */
	daemon_stop(d);
	return ret;
}

void daemon_stop_fetch(struct daemon *d)
{
	/* Nothing may ask the fetcher for more once it is gone: the sync worker goes first. */
	if (d && d->control)
		control_stop_sync(d->control);
	if (d && d->fetch) {
		fetch_stop(d->fetch);
		d->fetch = NULL;
	}
}

void daemon_stop(struct daemon *d)
{
	if (!d)
		return;
	/* An ephemeral node's own data gets its copies while the data server still runs. */
	if (d->autosync && d->server)
		autosync_flush(d->autosync, d->cfg->auto_sync.shutdown_flush_seconds);
	if (d->control)
		control_stop(d->control);
	if (d->server)
		dataserver_stop(d->server);
	autosync_stop(d->autosync);
	d->autosync = NULL;
	shared_stop(d->shared); /* uses the namespace and the peers */
	d->shared = NULL;
	/* Parked reads are answered (-ESHUTDOWN) before the FUSE session goes. */
	if (d->fetch)
		fetch_stop(d->fetch);
	d->fetch = NULL;
	if (d->peers)
		peers_stop(d->peers);
	d->peers = NULL;
	if (d->indexer)
		indexer_stop(d->indexer);
	d->indexer = NULL;
	ns_destroy(d->ns);
	if (d->cache)
		cache_close(d->cache);
	if (d->catalog)
		catalog_close(d->catalog);
	if (d->lock_fd >= 0)
		close(d->lock_fd);
	free(d);
}
