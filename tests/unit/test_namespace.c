/*
 * test_namespace — the in-memory tree without a mount: population from catalog entries,
 * lookups and reference counting, readdir cookies under concurrent change, the write
 * operations on a real backing directory, /.hosts mirrors, and memory per entry.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sync/namespace.h"
#include "sync/util.h"
#include "tests/unit/testutil.h"

static char tmpdir[] = "/tmp/meshfs-ns-XXXXXX";
static struct cfg_host hosts[2];
static struct mfs_config cfg;

static void setup_config(void)
{
	static const char *names[] = { "games", "models", "training" };
	static const char *paths[] = { "data/games", "models", "data/training" };

	if (!mkdtemp(tmpdir))
		abort();
	memset(&cfg, 0, sizeof(cfg));
	memset(hosts, 0, sizeof(hosts));
	hosts[0].name = strdup("n1");
	hosts[0].root = tmpdir;
	hosts[0].active = true;
	hosts[1].name = strdup("n2");
	hosts[1].root = strdup("/nonexistent");
	hosts[1].active = true;
	cfg.node = hosts[0].name;
	cfg.hosts = hosts;
	cfg.n_hosts = 2;
	cfg.self = &hosts[0];
	for (size_t i = 0; i < 3; i++) {
		cfg.categories[i].name = strdup(names[i]);
		cfg.categories[i].path = strdup(paths[i]);
	}
	cfg.n_categories = 3;
}

static struct cat_entry entry(const char *cat, const char *path, uint64_t size)
{
	struct cat_entry e = { .host = "n1", .origin = "n1", .category = cat, .path = path,
			       .size = size, .mtime_ns = 1000000000, .confirmed_at = 1 };

	e.hash.lo = size;
	return e;
}

static uint64_t lookup_path(struct ns *ns, const char *path)
{
	char buf[512], *save = NULL;
	uint64_t ino = NS_ROOT_INO;

	snprintf(buf, sizeof(buf), "%s", path);
	for (char *c = strtok_r(buf, "/", &save); c; c = strtok_r(NULL, "/", &save)) {
		struct ns_entry e;

		if (ns_lookup(ns, ino, c, &e) < 0)
			return 0;
		ino = e.ino;
	}
	return ino;
}

struct names {
	char list[64][64];
	int n;
	off_t last;
	int stop_after;
};

static int collect(void *arg, const char *name, const struct stat *st, uint64_t nodeid,
		   off_t next)
{
	struct names *nm = arg;

	if (nm->stop_after && nm->n >= nm->stop_after)
		return 1;
	if (nm->n < 64)
		snprintf(nm->list[nm->n], 64, "%s", name);
	nm->n++;
	nm->last = next;
	return 0;
}

static bool has_name(const struct names *nm, const char *name)
{
	for (int i = 0; i < nm->n && i < 64; i++)
		if (!strcmp(nm->list[i], name))
			return true;
	return false;
}

static void test_layout(void)
{
	struct ns *ns = NULL;
	struct names nm = { 0 };

	CHECK_EQ_INT(ns_create(&cfg, NULL, NULL, &ns), 0);
	CHECK_EQ_INT(ns_readdir(ns, NS_ROOT_INO, 0, false, collect, &nm), 0);
	CHECK(has_name(&nm, "games") && has_name(&nm, "models") && has_name(&nm, "training"));
	CHECK(has_name(&nm, ".hosts") && has_name(&nm, ".") && has_name(&nm, ".."));
	CHECK(lookup_path(ns, ".hosts/n1/games") != 0);
	CHECK(lookup_path(ns, ".hosts/n2/models") != 0);
	CHECK(lookup_path(ns, ".hosts/n3") == 0);
	ns_destroy(ns);
}

static void test_put_remove(void)
{
	struct ns *ns = NULL;
	struct cat_entry e1 = entry("games", "a/b/x.db", 10), e2 = entry("games", "a/y.db", 20);
	struct ns_info info;
	uint64_t files, bytes, ino;
	char path[600];
	int fd;

	CHECK_EQ_INT(ns_create(&cfg, NULL, NULL, &ns), 0);
	/* A published local file is looked up through its backing file. */
	snprintf(path, sizeof(path), "%s/data/games/a/b", tmpdir);
	CHECK_EQ_INT(mkdir_p(path, 0755), 0);
	snprintf(path, sizeof(path), "%s/data/games/a/b/x.db", tmpdir);
	fd = open(path, O_CREAT | O_WRONLY, 0644);
	CHECK(fd >= 0 && write(fd, "0123456789", 10) == 10);
	close(fd);
	CHECK_EQ_INT(ns_put_file(ns, 0, &e1), 0);
	CHECK_EQ_INT(ns_put_file(ns, 0, &e2), 0);
	ns_counts(ns, NULL, &files, &bytes);
	CHECK_EQ_INT(files, 2);
	CHECK_EQ_INT(bytes, 30);
	ino = lookup_path(ns, "games/a/b/x.db");
	CHECK(ino != 0);
	CHECK_EQ_INT(ns_info(ns, ino, &info), 0);
	CHECK(info.is_file && info.published);
	CHECK_EQ_STR(info.path, "a/b/x.db");
	CHECK_EQ_STR(info.origin, "n1");
	CHECK_EQ_INT(info.size, 10);
	/* A new version replaces the old one in place. */
	e1.size = 15;
	CHECK_EQ_INT(ns_put_file(ns, 0, &e1), 0);
	ns_counts(ns, NULL, &files, &bytes);
	CHECK_EQ_INT(files, 2);
	CHECK_EQ_INT(bytes, 35);
	/* Bad paths are refused. */
	struct cat_entry bad = entry("games", "../etc/passwd", 1);
	CHECK_EQ_INT(ns_put_file(ns, 0, &bad), -EINVAL);
	/* Removal: the node survives while the kernel holds it, but is gone from the tree. */
	CHECK_EQ_INT(ns_remove_file(ns, 0, "a/b/x.db"), 0);
	CHECK(lookup_path(ns, "games/a/b/x.db") == 0);
	CHECK_EQ_INT(ns_info(ns, ino, &info), 0);
	ns_forget(ns, ino, 1);
	CHECK_EQ_INT(ns_info(ns, ino, &info), -ENOENT);
	CHECK_EQ_INT(ns_remove_file(ns, 0, "a/b/x.db"), -ENOENT);
	ns_counts(ns, NULL, &files, &bytes);
	CHECK_EQ_INT(files, 1);
	CHECK_EQ_INT(bytes, 20);
	ns_destroy(ns);
}

static void test_readdir_cookies(void)
{
	struct ns *ns = NULL;
	struct names first = { .stop_after = 5 }, rest = { 0 };
	char name[32];
	uint64_t dir;

	CHECK_EQ_INT(ns_create(&cfg, NULL, NULL, &ns), 0);
	for (int i = 0; i < 40; i++) {
		snprintf(name, sizeof(name), "d/f%02d", i);
		struct cat_entry e = entry("models", name, i);
		CHECK_EQ_INT(ns_put_file(ns, 1, &e), 0);
	}
	dir = lookup_path(ns, "models/d");
	CHECK_EQ_INT(ns_readdir(ns, dir, 0, false, collect, &first), 0);
	CHECK_EQ_INT(first.n, 5); /* ".", "..", f00, f01, f02 */
	/* Entries removed before the offset must not shift what comes after it. */
	CHECK_EQ_INT(ns_remove_file(ns, 1, "d/f00"), 0);
	CHECK_EQ_INT(ns_remove_file(ns, 1, "d/f01"), 0);
	CHECK_EQ_INT(ns_readdir(ns, dir, first.last, false, collect, &rest), 0);
	CHECK_EQ_STR(rest.list[0], "f03");
	CHECK_EQ_INT(rest.n, 37);
	ns_destroy(ns);
}

static void test_write_ops(void)
{
	char path[600], *target = NULL;
	struct ns_caller who = { .uid = 1234, .gid = 5678 };
	struct ns *ns = NULL;
	struct ns_entry e, e2;
	struct stat st;
	int fd;
	uint64_t games;
	bool keep;

	CHECK_EQ_INT(ns_create(&cfg, NULL, NULL, &ns), 0);
	games = lookup_path(ns, "games");
	/* create makes the category dir, the file, and owns it to the caller */
	CHECK_EQ_INT(ns_create_file(ns, games, "new.db", 0640, O_WRONLY, &who, &fd, &e), 0);
	CHECK(write(fd, "hello", 5) == 5);
	close(fd);
	ns_release(ns, e.ino, true, true);
	snprintf(path, sizeof(path), "%s/data/games/new.db", tmpdir);
	CHECK_EQ_INT(stat(path, &st), 0);
	CHECK_EQ_INT(st.st_size, 5);
	CHECK_EQ_INT(st.st_uid, 1234);
	CHECK_EQ_INT(st.st_gid, 5678);
	CHECK_EQ_INT(st.st_mode & 07777, 0640);
	/* after a write the page cache is not kept; after an unchanged reopen it is */
	CHECK_EQ_INT(ns_open(ns, e.ino, O_RDONLY, &fd, &keep, NULL), 0);
	CHECK(!keep);
	close(fd);
	CHECK_EQ_INT(ns_open(ns, e.ino, O_RDONLY, &fd, &keep, NULL), 0);
	CHECK(keep);
	close(fd);
	/* mkdir, rename into it, link, symlink */
	CHECK_EQ_INT(ns_mkdir(ns, games, "sub", 0755, &who, &e2), 0);
	CHECK_EQ_INT(ns_rename(ns, games, "new.db", e2.ino, "moved.db", 0), 0);
	CHECK(lookup_path(ns, "games/new.db") == 0);
	CHECK(lookup_path(ns, "games/sub/moved.db") != 0);
	snprintf(path, sizeof(path), "%s/data/games/sub/moved.db", tmpdir);
	CHECK_EQ_INT(stat(path, &st), 0);
	CHECK_EQ_INT(ns_link(ns, e.ino, games, "hard.db", &e2), 0);
	CHECK_EQ_INT(e2.attr.st_nlink, 2);
	CHECK_EQ_INT(ns_symlink(ns, games, "ln", "sub/moved.db", &who, &e2), 0);
	CHECK_EQ_INT(ns_readlink(ns, e2.ino, &target), 0);
	CHECK_EQ_STR(target, "sub/moved.db");
	free(target);
	/* errno values a user expects */
	CHECK_EQ_INT(ns_mkdir(ns, games, "sub", 0755, &who, &e2), -EEXIST);
	CHECK_EQ_INT(ns_rmdir(ns, games, "sub"), -ENOTEMPTY);
	CHECK_EQ_INT(ns_unlink(ns, games, "sub"), -EISDIR);
	CHECK_EQ_INT(ns_unlink(ns, games, "nothing"), -ENOENT);
	CHECK_EQ_INT(ns_rename(ns, games, "hard.db", lookup_path(ns, "models"), "x", 0), -EXDEV);
	/* read-only places */
	CHECK_EQ_INT(ns_create_file(ns, NS_ROOT_INO, "x", 0644, O_WRONLY, &who, &fd, &e2),
		     -EROFS);
	CHECK_EQ_INT(ns_create_file(ns, lookup_path(ns, ".hosts/n1/games"), "x", 0644, O_WRONLY,
				    &who, &fd, &e2), -EROFS);
	uint64_t mirror = lookup_path(ns, ".hosts/n1/games/hard.db");
	CHECK(mirror != 0);
	CHECK_EQ_INT(ns_open(ns, mirror, O_WRONLY, &fd, &keep, NULL), -EROFS);
	CHECK_EQ_INT(ns_open(ns, mirror, O_RDONLY, &fd, &keep, NULL), 0);
	close(fd);
	CHECK_EQ_INT(ns_unlink(ns, lookup_path(ns, ".hosts/n1/games"), "hard.db"), -EROFS);
	/* unlink keeps an open fd readable */
	CHECK_EQ_INT(ns_open(ns, lookup_path(ns, "games/hard.db"), O_RDONLY, &fd, &keep, NULL), 0);
	CHECK_EQ_INT(ns_unlink(ns, games, "hard.db"), 0);
	char buf[8] = "";
	CHECK(pread(fd, buf, 5, 0) == 5 && memcmp(buf, "hello", 5) == 0);
	close(fd);
	ns_destroy(ns);
}

static struct cat_entry remote_entry(const char *host, const char *path, uint64_t size,
				     int64_t mtime_ns, uint64_t hash_lo)
{
	struct cat_entry e = { .host = host, .origin = host, .category = "models", .path = path,
			       .size = size, .mtime_ns = mtime_ns, .confirmed_at = 1 };

	e.hash.lo = hash_lo;
	return e;
}

static void test_versions(void)
{
	struct ns *ns = NULL;
	struct ns_remote r;
	struct ns_info info;
	struct names nm = { 0 };
	uint64_t ino, files, bytes;
	int fd = -1;
	bool keep;

	CHECK_EQ_INT(ns_create(&cfg, NULL, NULL, &ns), 0);
	/* A file only n2 has: visible, remote, read-only, its sources name n2. */
	struct cat_entry e2 = remote_entry("n2", "deep/m.pth", 100, 2000, 7);
	CHECK_EQ_INT(ns_put_version(ns, 1, 1, &e2), 0);
	ino = lookup_path(ns, "models/deep/m.pth");
	CHECK(ino != 0);
	CHECK_EQ_INT(ns_info(ns, ino, &info), 0);
	CHECK(info.state == NS_STATE_REMOTE);
	CHECK_EQ_STR(info.origin, "n2");
	CHECK_EQ_INT(info.sources, 2);
	CHECK_EQ_INT(ns_open(ns, ino, O_RDONLY, &fd, &keep, &r), -EREMOTE);
	CHECK_EQ_STR(r.path, "deep/m.pth");
	CHECK_EQ_INT(r.size, 100);
	CHECK_EQ_INT(r.sources, 2);
	CHECK_EQ_INT(ns_open(ns, ino, O_WRONLY, &fd, &keep, &r), -EROFS);
	struct ns_caller who = { 0, 0, 022 };
	struct ns_entry ne;
	CHECK_EQ_INT(ns_unlink(ns, lookup_path(ns, "models/deep"), "m.pth"), -EROFS);
	CHECK_EQ_INT(ns_create_file(ns, lookup_path(ns, "models/deep"), "m.pth", 0644, O_WRONLY,
				    &who, &fd, &ne), -EROFS);
	/* /.hosts/n2 shows it, /.hosts/n1 does not. */
	CHECK(lookup_path(ns, ".hosts/n2/models/deep/m.pth") != 0);
	CHECK(lookup_path(ns, ".hosts/n1/models/deep/m.pth") == 0);
	/* n1 publishes a newer version at the same path (mtime greater): it wins. */
	char path[600];
	snprintf(path, sizeof(path), "%s/models/deep", tmpdir);
	CHECK_EQ_INT(mkdir_p(path, 0755), 0);
	snprintf(path, sizeof(path), "%s/models/deep/m.pth", tmpdir);
	fd = open(path, O_CREAT | O_WRONLY, 0644);
	CHECK(fd >= 0 && write(fd, "abc", 3) == 3);
	close(fd);
	struct cat_entry e1 = remote_entry("n1", "deep/m.pth", 3, 3000, 9);
	CHECK_EQ_INT(ns_put_version(ns, 0, 1, &e1), 0);
	CHECK_EQ_INT(ns_info(ns, ino, &info), 0);
	CHECK(info.state == NS_STATE_LOCAL);
	CHECK_EQ_INT(info.size, 3);
	CHECK_EQ_INT(info.sources, 1);
	ns_counts(ns, NULL, &files, &bytes);
	CHECK_EQ_INT(files, 1);
	CHECK_EQ_INT(bytes, 3);
	/* Both versions stay reachable under /.hosts. */
	CHECK_EQ_INT(ns_info(ns, lookup_path(ns, ".hosts/n2/models/deep/m.pth"), &info), 0);
	CHECK_EQ_INT(info.size, 100);
	CHECK(info.state == NS_STATE_REMOTE);
	/* Same mtime: the smaller host name wins; same bytes: both are sources, local shown. */
	e2.mtime_ns = 3000;
	e2.hash.lo = 9;
	e2.size = 3;
	CHECK_EQ_INT(ns_put_version(ns, 1, 1, &e2), 0);
	CHECK_EQ_INT(ns_info(ns, ino, &info), 0);
	CHECK_EQ_INT(info.sources, 3);
	CHECK(info.state == NS_STATE_LOCAL);
	/* n1 deletes its version: n2's is shown again, remote. */
	CHECK_EQ_INT(ns_remove_file(ns, 1, "deep/m.pth"), 0);
	CHECK_EQ_INT(ns_info(ns, ino, &info), 0);
	CHECK(info.state == NS_STATE_REMOTE);
	CHECK_EQ_INT(info.sources, 2);
	ns_counts(ns, NULL, &files, &bytes);
	CHECK_EQ_INT(files, 1);
	CHECK_EQ_INT(bytes, 3);
	/* n2 is reset: the file goes. */
	ns_remove_host(ns, 1);
	CHECK(lookup_path(ns, "models/deep/m.pth") == 0);
	ns_counts(ns, NULL, &files, &bytes);
	CHECK_EQ_INT(files, 0);
	CHECK_EQ_INT(bytes, 0);
	CHECK_EQ_INT(ns_readdir(ns, lookup_path(ns, "models/deep"), 0, false, collect, &nm), 0);
	CHECK_EQ_INT(nm.n, 2);
	/* A remote-only directory goes with its last file. */
	struct cat_entry e3 = remote_entry("n2", "only/there/x.pth", 1, 1, 1);
	CHECK_EQ_INT(ns_put_version(ns, 1, 1, &e3), 0);
	CHECK(lookup_path(ns, "models/only/there") != 0);
	CHECK_EQ_INT(ns_remove_version(ns, 1, 1, "only/there/x.pth"), 0);
	struct names top = { 0 };
	CHECK_EQ_INT(ns_readdir(ns, lookup_path(ns, "models"), 0, false, collect, &top), 0);
	CHECK(!has_name(&top, "only"));
	ns_forget(ns, ino, 100);
	ns_destroy(ns);
}

static void test_memory_per_entry(void)
{
	struct ns *ns = NULL;
	char name[64];
	const int n = 200000;
	long before, after;
	FILE *f;

	CHECK_EQ_INT(ns_create(&cfg, NULL, NULL, &ns), 0);
	f = fopen("/proc/self/statm", "r");
	CHECK(f && fscanf(f, "%*s %ld", &before) == 1);
	fclose(f);
	for (int i = 0; i < n; i++) {
		snprintf(name, sizeof(name), "dir%03d/selfplay_%07d.db", i % 500, i);
		struct cat_entry e = entry("games", name, i);
		ns_put_file(ns, 0, &e);
	}
	f = fopen("/proc/self/statm", "r");
	CHECK(f && fscanf(f, "%*s %ld", &after) == 1);
	fclose(f);
	printf("namespace: %.0f bytes per entry (%d entries)\n",
	       (double)(after - before) * 4096 / n, n);
	uint64_t files;
	ns_counts(ns, NULL, &files, NULL);
	CHECK_EQ_INT(files, n);
	ns_destroy(ns);
}

static void cleanup(void)
{
	char cmd[600];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	if (system(cmd) != 0)
		fprintf(stderr, "cleanup of %s failed\n", tmpdir);
}

static void test_setup(void)
{
	setup_config();
	atexit(cleanup);
}

TEST_MAIN(TEST(test_setup), TEST(test_layout), TEST(test_put_remove), TEST(test_readdir_cookies),
	  TEST(test_write_ops), TEST(test_versions), TEST(test_memory_per_entry))
