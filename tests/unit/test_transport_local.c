/*
 * test_transport_local — the local backend through the generic xport_* calls: ranges inside
 * and across EOF, stat, the errors a caller sees for missing files, directories and FIFOs,
 * and directory listings.
 */
#include "transports/transport.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include "tests/unit/testutil.h"

#define FILE_LEN 100000

static char tmpdir[] = "/tmp/meshfs-test-xport-XXXXXX";

static void tmp_path(char *out, size_t len, const char *name)
{
	snprintf(out, len, "%s/%s", tmpdir, name);
}

static uint8_t pattern_byte(size_t i)
{
	return (uint8_t)((i * 7 + 3) % 253);
}

static void write_file(const char *name, size_t len)
{
	char path[256];
	FILE *f;

	tmp_path(path, sizeof(path), name);
	f = fopen(path, "w");
	if (!f) {
		perror(path);
		abort();
	}
	for (size_t i = 0; i < len; i++)
		fputc(pattern_byte(i), f);
	fclose(f);
}

static int same_as_pattern(const uint8_t *buf, size_t len, uint64_t off)
{
	for (size_t i = 0; i < len; i++)
		if (buf[i] != pattern_byte(off + i))
			return 0;
	return 1;
}

static void test_registry(void)
{
	CHECK(xport_find("local") == &xport_local_ops);
	CHECK(xport_find("nope") == NULL);
	CHECK(xport_find(NULL) == NULL);
	CHECK_EQ_STR(xport_local_ops.name, "local");
	CHECK(xport_open("nope", "/etc/hostname", &(struct xport *){ NULL }) < 0);
}

static void test_read_ranges(void)
{
	struct xport *x = NULL;
	struct xport_stat st;
	char path[256];
	uint8_t *buf = malloc(FILE_LEN + 100);
	struct timeval tv[2] = { { 1600000000, 0 }, { 1600000000, 0 } };

	write_file("data.bin", FILE_LEN);
	tmp_path(path, sizeof(path), "data.bin");
	CHECK_EQ_INT(utimes(path, tv), 0);
	CHECK_EQ_INT(xport_open("local", path, &x), 0);
	if (!x)
		goto out;
	CHECK(x->ops == &xport_local_ops);
	CHECK_EQ_STR(xport_last_error(x), "");

	CHECK_EQ_INT(xport_stat(x, &st), 0);
	CHECK_EQ_INT(st.size, FILE_LEN);
	CHECK_EQ_INT(st.mtime_ns, 1600000000LL * 1000000000LL);

	/* Start, middle, and a range ending exactly at EOF. */
	CHECK_EQ_INT(xport_read_range(x, buf, 4096, 0), 4096);
	CHECK(same_as_pattern(buf, 4096, 0));
	CHECK_EQ_INT(xport_read_range(x, buf, 1000, 54321), 1000);
	CHECK(same_as_pattern(buf, 1000, 54321));
	CHECK_EQ_INT(xport_read_range(x, buf, 100, FILE_LEN - 100), 100);
	CHECK(same_as_pattern(buf, 100, FILE_LEN - 100));

	/* Across EOF: short count, then 0 at and past EOF. */
	CHECK_EQ_INT(xport_read_range(x, buf, 500, FILE_LEN - 10), 10);
	CHECK(same_as_pattern(buf, 10, FILE_LEN - 10));
	CHECK_EQ_INT(xport_read_range(x, buf, 500, FILE_LEN), 0);
	CHECK_EQ_INT(xport_read_range(x, buf, 500, FILE_LEN + 12345), 0);
	CHECK_EQ_INT(xport_read_range(x, buf, 0, 0), 0);

	/* The whole file in one call, larger than any single syscall buffer would matter. */
	CHECK_EQ_INT(xport_read_range(x, buf, FILE_LEN + 100, 0), FILE_LEN);
	CHECK(same_as_pattern(buf, FILE_LEN, 0));

	/* An offset no off_t can hold is the caller's error, with a message. */
	CHECK_EQ_INT(xport_read_range(x, buf, 10, UINT64_MAX), -EINVAL);
	CHECK(strstr(xport_last_error(x), "data.bin") != NULL);
out:
	xport_close(x);
	free(buf);
}

static void test_open_errors(void)
{
	struct xport *x = NULL;
	char path[256];

	tmp_path(path, sizeof(path), "does-not-exist");
	CHECK_EQ_INT(xport_open("local", path, &x), -ENOENT);
	CHECK(x == NULL);

	CHECK_EQ_INT(xport_open("local", tmpdir, &x), -EISDIR);
	CHECK(x == NULL);

	/* A FIFO must neither block the open nor be served. */
	tmp_path(path, sizeof(path), "fifo");
	CHECK_EQ_INT(mkfifo(path, 0644), 0);
	CHECK_EQ_INT(xport_open("local", path, &x), -EINVAL);
	CHECK(x == NULL);
	unlink(path);

	tmp_path(path, sizeof(path), "data.bin/child");
	CHECK_EQ_INT(xport_open("local", path, &x), -ENOTDIR);

	xport_close(NULL);
	CHECK_EQ_STR(xport_last_error(NULL), "");
}

static void test_empty_file(void)
{
	struct xport *x = NULL;
	struct xport_stat st;
	char path[256], buf[16];

	write_file("empty", 0);
	tmp_path(path, sizeof(path), "empty");
	CHECK_EQ_INT(xport_open("local", path, &x), 0);
	if (!x)
		return;
	CHECK_EQ_INT(xport_stat(x, &st), 0);
	CHECK_EQ_INT(st.size, 0);
	CHECK_EQ_INT(xport_read_range(x, buf, sizeof(buf), 0), 0);
	xport_close(x);
}

static void test_list(void)
{
	struct xport_dirent *list = NULL;
	char path[256];
	size_t n = 0;

	tmp_path(path, sizeof(path), "tree");
	CHECK_EQ_INT(mkdir(path, 0755), 0);
	tmp_path(path, sizeof(path), "tree/sub");
	CHECK_EQ_INT(mkdir(path, 0755), 0);
	write_file("tree/b.txt", 3);
	write_file("tree/a.txt", 5);
	tmp_path(path, sizeof(path), "tree/link");
	CHECK_EQ_INT(symlink("sub", path), 0);

	tmp_path(path, sizeof(path), "tree");
	CHECK_EQ_INT(xport_list("local", path, &list, &n), 0);
	CHECK_EQ_INT(n, 4);
	if (n == 4) {
		/* Sorted by name; a symlink to a directory is not itself a directory. */
		CHECK_EQ_STR(list[0].name, "a.txt");
		CHECK_EQ_INT(list[0].is_dir, 0);
		CHECK_EQ_STR(list[1].name, "b.txt");
		CHECK_EQ_STR(list[2].name, "link");
		CHECK_EQ_INT(list[2].is_dir, 0);
		CHECK_EQ_STR(list[3].name, "sub");
		CHECK_EQ_INT(list[3].is_dir, 1);
	}
	xport_free_list(list, n);

	tmp_path(path, sizeof(path), "tree/sub");
	list = NULL;
	CHECK_EQ_INT(xport_list("local", path, &list, &n), 0);
	CHECK_EQ_INT(n, 0);
	xport_free_list(list, n);

	tmp_path(path, sizeof(path), "no-such-dir");
	CHECK_EQ_INT(xport_list("local", path, &list, &n), -ENOENT);
	tmp_path(path, sizeof(path), "tree/a.txt");
	CHECK_EQ_INT(xport_list("local", path, &list, &n), -ENOTDIR);
	CHECK_EQ_INT(xport_list("nope", tmpdir, &list, &n), -EPROTONOSUPPORT);
}

/* Runs before main (TEST_MAIN owns main): one scratch directory for the whole run. */
__attribute__((constructor)) static void setup(void)
{
	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		exit(2);
	}
}

static int remove_one(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
	return remove(path) < 0 ? -1 : 0;
}

__attribute__((destructor)) static void teardown(void)
{
	nftw(tmpdir, remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

TEST_MAIN(TEST(test_registry), TEST(test_read_ranges), TEST(test_open_errors),
	  TEST(test_empty_file), TEST(test_list))
