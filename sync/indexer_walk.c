/*
 * indexer_walk — how the indexer thread looks at its data directories: one path (a job or a
 * pending check), a directory tree, or every category (the full scan). Part of the indexer
 * (indexer.c has the module's overview; indexer_int.h what the files share).
 *
 * A tree is walked depth-first with a stack of relative paths, one directory open at a time.
 * Its names are read and sorted first, so a file's ".writing" sidecar is found by binary
 * search, and each child is lstat'ed through the directory's fd: nothing below the category
 * root is followed if it is a symlink. A directory met is stamped with the scan generation
 * and watched; a regular file goes to indexer_check_file(). The walk calls indexer_service()
 * between files, so jobs and inotify are served during a long scan.
 *
 * What was not met is never assumed gone: after the walks of a full scan, the catalog entries
 * and known directories of the categories whose walk completed and that were not met are
 * lstat'ed, and only those proven gone are deleted. An unreadable directory or a missing
 * category root (unmounted storage) deletes nothing.
 *
 * Everything here runs on the indexer thread, with ix->lock not held (see indexer_int.h).
 */
#include "sync/indexer.h"
#include "sync/indexer_int.h"

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

#include "sync/log.h"
#include "sync/pathset.h"
#include "sync/util.h"

/* --- path helpers ------------------------------------------------------------------------- */

/* True when @path is @dir itself or lies below it; "" is above everything. */
static bool rel_is_under(const char *path, const char *dir)
{
	size_t n = strlen(dir);

	if (n == 0)
		return true;
	return strncmp(path, dir, n) == 0 && (path[n] == '\0' || path[n] == '/');
}

/* True when lstat() proves @full is gone (or is no longer of the kind @want_dir asks). */
static bool proven_gone(const char *full, bool want_dir)
{
	struct stat st;

	if (lstat(full, &st) < 0)
		return errno == ENOENT || errno == ENOTDIR;
	return want_dir ? !S_ISDIR(st.st_mode) : !S_ISREG(st.st_mode);
}

/* Whether "<full>.writing" exists. */
static bool has_sidecar(const char *full)
{
	struct stat st;
	char *side = NULL;
	bool ret = false;

	if (asprintf(&side, "%s" WRITING_SUFFIX, full) < 0)
		side = NULL;
	else
		ret = lstat(side, &st) == 0;
	free(side);
	return ret;
}


/* --- walking ------------------------------------------------------------------------------ */

struct str_stack {
	char **items;
	size_t n;
	size_t cap;
};

static int stack_push(struct str_stack *s, char *str)
{
	if (s->n == s->cap) {
		size_t ncap = s->cap ? s->cap * 2 : 16;
		char **bigger = realloc(s->items, ncap * sizeof(*bigger));

		if (!bigger) {
			free(str);
			return -ENOMEM;
		}
		s->items = bigger;
		s->cap = ncap;
	}
	s->items[s->n++] = str;
	return 0;
}

static int cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool names_contain(char **names, size_t n, const char *name)
{
	return bsearch(&name, names, n, sizeof(*names), cmp_names) != NULL;
}

/* Marks dir (@ci, @rel) as met in this generation, watches it, and tells the owner. */
static void meet_dir(struct indexer *ix, size_t ci, const char *rel, const char *full)
{
	struct pent *d = pset_find(&ix->dirs, -1, ci, rel);

	if (!d)
		d = pset_add(&ix->dirs, -1, ci, rel);
	if (d) {
		d->gen = ix->gen;
		d->wd = indexer_add_watch(ix, ci, rel, full);
	}
	if (ix->ops.dir_seen)
		ix->ops.dir_seen(ix->arg, ci, rel);
}

/* Reads every name of the open directory @dir except "." and "..", sorted. */
static int read_names(DIR *dir, char ***out, size_t *n_out)
{
	char **names = NULL;
	size_t n = 0, cap = 0;
	struct dirent *de;
	int ret = 0;

	for (;;) {
		errno = 0;
		de = readdir(dir);
		if (!de) {
			ret = -errno;
			break;
		}
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (n == cap) {
			size_t ncap = cap ? cap * 2 : 64;
			char **bigger = realloc(names, ncap * sizeof(*bigger));

			if (!bigger) {
				ret = -ENOMEM;
				break;
			}
			names = bigger;
			cap = ncap;
		}
		names[n] = strdup(de->d_name);
		if (!names[n]) {
			ret = -ENOMEM;
			break;
		}
		n++;
	}
	if (n > 1)
		qsort(names, n, sizeof(*names), cmp_names);
	*out = names;
	*n_out = n;
	return ret;
}

/* Looks at the entries of one directory; subdirectories go onto @todo. */
static void walk_dir(struct indexer *ix, size_t ci, const char *rel, bool force,
		     struct str_stack *todo)
{
	char *full = path_join(ix->catdir[ci], rel), **names = NULL;
	char side[NAME_MAX + WRITING_LEN + 2];
	size_t n_names = 0;
	DIR *dir = NULL;
	int fd, ret;

	if (!full)
		goto out;
	meet_dir(ix, ci, rel, full);
	fd = open(full,
		  O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NONBLOCK | (rel[0] ? O_NOFOLLOW : 0));
	if (fd < 0) {
		if (errno != ENOENT && errno != ENOTDIR && errno != ELOOP)
			indexer_note_unreadable(ix, ci, rel, true, errno);
		goto out;
	}
	dir = fdopendir(fd);
	if (!dir) {
		indexer_note_unreadable(ix, ci, rel, true, errno);
		close(fd);
		goto out;
	}
	ret = read_names(dir, &names, &n_names);
	if (ret < 0)
		indexer_note_unreadable(ix, ci, rel, true, -ret);
	for (size_t i = 0; i < n_names && !ix->stopping; i++) {
		const char *name = names[i];
		char *child = NULL, *child_full = NULL;
		struct stat st;

		indexer_service(ix);
		if (ix->stopping || indexer_ends_with_writing(name))
			continue;
		child = indexer_rel_join(rel, name);
		if (!child)
			continue;
		if (!path_is_clean_relative(child)) {
			log_msg(LOG_DEBUG, "indexer: skipping %s/%s: not a clean path",
				indexer_cat_name(ix, ci), child);
		} else if (fstatat(dirfd(dir), name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
			if (errno != ENOENT)
				indexer_note_unreadable(ix, ci, child, false, errno);
		} else if (S_ISDIR(st.st_mode)) {
			stack_push(todo, child);
			child = NULL;
		} else if (S_ISLNK(st.st_mode)) {
			/* Never published (no content of its own) and never followed, but shown
			 * in this node's view, as when it was made through the mount. */
			if (ix->ops.symlink_seen)
				ix->ops.symlink_seen(ix->arg, ci, child);
		} else if (S_ISREG(st.st_mode)) {
			snprintf(side, sizeof(side), "%s" WRITING_SUFFIX, name);
			child_full = path_join(full, name);
			if (child_full)
				indexer_check_file(ix, ci, child, child_full, &st,
						   names_contain(names, n_names, side), force,
						   NULL);
		}
		free(child_full);
		free(child);
	}
out:
	for (size_t i = 0; i < n_names; i++)
		free(names[i]);
	free(names);
	if (dir)
		closedir(dir);
	free(full);
}

/* Walks the tree at (@ci, @rel), which lstat has just shown to be a directory. */
static void walk_tree(struct indexer *ix, size_t ci, const char *rel, bool force)
{
	struct str_stack todo = { 0 };
	char *start = strdup(rel);

	if (!start || stack_push(&todo, start) < 0)
		goto out;
	while (todo.n && !ix->stopping) {
		char *dir = todo.items[--todo.n];

		walk_dir(ix, ci, dir, force, &todo);
		free(dir);
	}
out:
	while (todo.n)
		free(todo.items[--todo.n]);
	free(todo.items);
}

struct under_arg {
	size_t cat;
	const char *dir;
};

static bool pred_dir_under(struct pent *e, void *arg)
{
	const struct under_arg *u = arg;

	return e->cat == u->cat && rel_is_under(e->path, u->dir);
}

/*
 * Re-checks the known directories in @list (taken out of ix->dirs): those lstat shows gone
 * are reported and forgotten, the rest go back with the current generation.
 */
static void settle_dirs(struct indexer *ix, struct pent *list)
{
	while (list) {
		struct pent *d = list;
		char *full = path_join(ix->catdir[d->cat], d->path);

		list = d->next;
		if (full && proven_gone(full, true)) {
			indexer_drop_watch(ix, d->wd, d->cat, d->path);
			log_msg(LOG_DEBUG, "indexer: dir %s/%s gone", indexer_cat_name(ix, d->cat),
				d->path);
			if (ix->ops.dir_gone)
				ix->ops.dir_gone(ix->arg, d->cat, d->path);
			pset_entry_free(d);
		} else {
			d->gen = ix->gen;
			if (pset_relink(&ix->dirs, d) < 0)
				pset_entry_free(d);
		}
		free(full);
	}
}

/* Deletes the entries in @l whose files lstat shows gone (or no longer regular). */
static void settle_entries(struct indexer *ix, struct path_list *l, const bool *present)
{
	for (size_t i = 0; i < l->n && !ix->stopping; i++) {
		size_t ci = l->items[i].cat;
		char *full;

		if (present && !present[ci])
			continue;
		full = path_join(ix->catdir[ci], l->items[i].path);
		if (full && proven_gone(full, false))
			indexer_drop_entry(ix, ci, l->items[i].path);
		free(full);
		indexer_service(ix);
	}
}

/* What was at directory (@ci, @rel) is gone: settle everything known below it. */
static void subtree_gone(struct indexer *ix, size_t ci, const char *rel)
{
	struct under_arg u = { .cat = ci, .dir = rel };
	struct path_list l;

	indexer_flush_publishes(ix);
	if (indexer_collect_entries(ix, ci, rel, &l) == 0) {
		settle_entries(ix, &l, NULL);
		indexer_path_list_free(&l);
	}
	settle_dirs(ix, pset_extract(&ix->dirs, pred_dir_under, &u));
}

/* True when the category's own directory is there (following a symlink to it). */
static bool cat_root_present(struct indexer *ix, size_t ci)
{
	struct stat st;

	return ix->catdir[ci] && stat(ix->catdir[ci], &st) == 0 && S_ISDIR(st.st_mode);
}

/*
 * Looks at one path now: a file is checked (@force: without the quiet wait), a directory
 * walked, and what is gone is deleted — unless the whole category dir is gone, which looks
 * like unmounted storage, not like deleted data. @prev is the pending entry that led here.
 */
void indexer_check_path(struct indexer *ix, size_t ci, const char *rel, bool force,
			const struct pent *prev)
{
	char *full = NULL;
	const char *base;
	struct stat st;

	if (ci >= ix->n_cats || !ix->catdir[ci] || (rel[0] && !path_is_clean_relative(rel)))
		goto out;
	base = strrchr(rel, '/');
	base = base ? base + 1 : rel;
	if (indexer_ends_with_writing(base))
		goto out;
	if (!cat_root_present(ix, ci)) {
		log_msg(LOG_DEBUG, "indexer: %s/%s: category dir missing, leaving it be",
			indexer_cat_name(ix, ci), rel);
		goto out;
	}
	full = path_join(ix->catdir[ci], rel);
	if (!full)
		goto out;
	if ((rel[0] ? lstat(full, &st) : stat(full, &st)) < 0) {
		if (errno == ENOENT || errno == ENOTDIR) {
			indexer_drop_entry(ix, ci, rel);
			if (pset_find(&ix->dirs, -1, ci, rel))
				subtree_gone(ix, ci, rel);
		} else {
			indexer_note_unreadable(ix, ci, rel, false, errno);
		}
		goto out;
	}
	if (S_ISDIR(st.st_mode)) {
		if (rel[0])
			indexer_drop_entry(ix, ci, rel);
		walk_tree(ix, ci, rel, force);
		goto out;
	}
	if (pset_find(&ix->dirs, -1, ci, rel))
		subtree_gone(ix, ci, rel);
	if (S_ISREG(st.st_mode))
		indexer_check_file(ix, ci, rel, full, &st, has_sidecar(full), force, prev);
	else
		indexer_drop_entry(ix, ci, rel);
out:
	free(full);
}

/* --- full scan ---------------------------------------------------------------------------- */

struct stale_arg {
	uint64_t gen;
	const bool *present;
};

static bool pred_dir_stale(struct pent *e, void *arg)
{
	const struct stale_arg *s = arg;

	return e->gen != s->gen && s->present[e->cat];
}

struct count_ctx {
	const char *category;
	size_t n;
};

static int count_cb(void *arg, const struct cat_entry *e)
{
	struct count_ctx *c = arg;

	if (strcmp(e->category, c->category) == 0 && strcmp(e->origin, e->host) == 0)
		c->n++;
	return 0;
}

/* Walks one category; returns whether its directory is there and the walk completed. */
static bool scan_category(struct indexer *ix, size_t ci)
{
	struct count_ctx counted = { .category = indexer_cat_name(ix, ci) };

	bool ret = false;

	if (!ix->catdir[ci]) {
		if (!ix->no_dir_logged[ci])
			log_msg(LOG_INFO, "indexer: this node has no directory for category %s "
				"(no root or storage path)", indexer_cat_name(ix, ci));
		ix->no_dir_logged[ci] = true;
		goto out;
	}
	if (!cat_root_present(ix, ci)) {
		if (!ix->cat_missing[ci]) {
			catalog_foreach(ix->cat, ix->cfg->node, count_cb, &counted);
			if (counted.n)
				log_msg(LOG_WARNING, "indexer: %s (category %s) is missing; "
					"keeping its %zu catalog entries (unmounted storage?)",
					ix->catdir[ci], indexer_cat_name(ix, ci), counted.n);
			else
				log_msg(LOG_INFO, "indexer: %s (category %s) does not exist; "
					"treating it as empty", ix->catdir[ci],
					indexer_cat_name(ix, ci));
		}
		ix->cat_missing[ci] = true;
		goto out;
	}
	if (ix->cat_missing[ci])
		log_msg(LOG_INFO, "indexer: %s (category %s) is back", ix->catdir[ci],
			indexer_cat_name(ix, ci));
	ix->cat_missing[ci] = false;
	walk_tree(ix, ci, "", false);
	ret = !ix->stopping;
out:
	return ret;
}

void indexer_full_scan(struct indexer *ix)
{
	bool present[CFG_MAX_CATEGORIES] = { false };
	struct stale_arg stale = { .present = present };
	int64_t t0 = mono_ns(), ms;
	struct path_list l;
	uint64_t files = 0, bytes = 0, hashed0, hashed;
	bool totals_ok;

	ix->scan_wanted = false;
	ix->scanning = true;
	ix->gen++;
	ix->scan_unreadable = 0;
	ix->scan_last_unreadable[0] = '\0';
	pset_clear(&ix->warned);
	pthread_mutex_lock(&ix->lock);
	hashed0 = ix->stats.hashed_files;
	pthread_mutex_unlock(&ix->lock);

	for (size_t ci = 0; ci < ix->n_cats && !ix->stopping; ci++)
		present[ci] = scan_category(ix, ci);
	if (ix->stopping)
		goto out;
	indexer_flush_publishes(ix);
	/* Only after complete walks: what was not met is verified, never assumed gone. */
	if (indexer_collect_entries(ix, SIZE_MAX, NULL, &l) == 0) {
		settle_entries(ix, &l, present);
		indexer_path_list_free(&l);
	}
	stale.gen = ix->gen;
	settle_dirs(ix, pset_extract(&ix->dirs, pred_dir_stale, &stale));
	if (ix->stopping)
		goto out;

	totals_ok = catalog_totals(ix->cat, ix->cfg->node, &files, &bytes) == 0;
	ms = (mono_ns() - t0) / NS_PER_MS;
	pthread_mutex_lock(&ix->lock);
	if (totals_ok) {
		ix->stats.files = files;
		ix->stats.bytes = bytes;
	}
	files = ix->stats.files;
	hashed = ix->stats.hashed_files - hashed0;
	ix->stats.unreadable = ix->scan_unreadable;
	snprintf(ix->stats.last_unreadable, sizeof(ix->stats.last_unreadable), "%s",
		 ix->scan_last_unreadable);
	ix->stats.last_scan_done = now_s();
	ix->stats.last_scan_ms = ms;
	ix->first_scan_done = true;
	pthread_cond_broadcast(&ix->scan_cond);
	pthread_mutex_unlock(&ix->lock);
	log_msg(hashed || ix->scan_unreadable ? LOG_INFO : LOG_DEBUG,
		"indexer: scan done in %lld ms: %llu files, %llu hashed, %llu unreadable",
		(long long)ms, (unsigned long long)files, (unsigned long long)hashed,
		(unsigned long long)ix->scan_unreadable);
out:
	ix->scanning = false;
	ix->next_rescan = mono_ns() + ix->rescan_ns;
}
