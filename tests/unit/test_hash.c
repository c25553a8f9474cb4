/*
 * test_hash — hash.c against reference vectors and against itself.
 *
 * The expected hex strings were produced by `xxhsum -H2` (xxHash 0.8.1's own command-line
 * tool, an independent caller of the reference implementation) on files made the same way
 * as here: empty, "abc", and bytes i % 251 for 200 bytes and 10 MiB (whole file and each
 * 4 MiB slice). Other sizes are checked for self-consistency: chunk i equals hash_buf of
 * slice i, and the whole-file hash equals hash_buf of all the bytes.
 */
#include "sync/hash.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sync/util.h"
#include "tests/unit/testutil.h"

#define MIB ((size_t)1 << 20)

/* xxhsum -H2 output for the reference files. */
#define XXH_EMPTY "99aa06d3014798d86001c324468d497f"
#define XXH_ABC "06b05ab6733a618578af5f94892f3950"
#define XXH_PAT200 "cb0395310643ba0edd97e9af3609d9f5"
#define XXH_PAT10M "854e8e93f6458db13a42ecaa4b6dc04f"
#define XXH_PAT10M_C0 "731ed6b5c61ad3fde747d2a342fb4555"
#define XXH_PAT10M_C1 "25446a39cbb524e73ed00d59a6462821"
#define XXH_PAT10M_C2 "34abd38cf47a7a94e2812b339b627adc"

static char tmpdir[] = "/tmp/meshfs-test-hash-XXXXXX";

static uint8_t *pattern(size_t len)
{
	uint8_t *p = malloc(len ? len : 1);

	if (!p)
		abort();
	for (size_t i = 0; i < len; i++)
		p[i] = (uint8_t)(i % 251);
	return p;
}

/* Writes @len bytes of @data to a new file in tmpdir and returns it open for reading. */
static int make_file(const char *name, const void *data, size_t len)
{
	char path[256];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0 || write_all(fd, data, len) != 0) {
		perror(path);
		abort();
	}
	return fd;
}

static void check_hex(const struct hash128 *h, const char *hex)
{
	char s[HASH_STR_LEN], want[HASH_STR_LEN + 8];

	hash_format(h, s);
	snprintf(want, sizeof(want), "xxh3-128:%s", hex);
	CHECK_EQ_STR(s, want);
}

static void test_buf_vectors(void)
{
	uint8_t *p = pattern(200);
	struct hash128 h;

	h = hash_buf("", 0);
	check_hex(&h, XXH_EMPTY);
	h = hash_buf("abc", 3);
	check_hex(&h, XXH_ABC);
	h = hash_buf(p, 200);
	check_hex(&h, XXH_PAT200);
	free(p);
}

static void test_fd_empty(void)
{
	int fd = make_file("empty", "", 0);
	struct hash128 whole, *chunks = (struct hash128 *)&whole;
	size_t n = 99;
	uint64_t size = 99;

	CHECK_EQ_INT(hash_fd(fd, &whole, &size, &chunks, &n), 0);
	CHECK_EQ_INT(size, 0);
	CHECK_EQ_INT(n, 0);
	CHECK(chunks == NULL);
	check_hex(&whole, XXH_EMPTY);
	close(fd);
}

static void test_fd_abc(void)
{
	int fd = make_file("abc", "abc", 3);
	struct hash128 whole, *chunks = NULL;
	size_t n = 0;
	uint64_t size = 0;

	CHECK_EQ_INT(hash_fd(fd, &whole, &size, &chunks, &n), 0);
	CHECK_EQ_INT(size, 3);
	CHECK_EQ_INT(n, 1);
	if (chunks && n == 1) {
		check_hex(&chunks[0], XXH_ABC);
		CHECK(hash_equal(&chunks[0], &whole));
	}
	check_hex(&whole, XXH_ABC);
	free(chunks);
	close(fd);
}

static void test_fd_10mib_reference(void)
{
	size_t len = 10 * MIB;
	uint8_t *p = pattern(len);
	int fd = make_file("pat10m", p, len);
	struct hash128 whole, *chunks = NULL;
	size_t n = 0;
	uint64_t size = 0;

	CHECK_EQ_INT(hash_fd(fd, &whole, &size, &chunks, &n), 0);
	CHECK_EQ_INT(size, len);
	check_hex(&whole, XXH_PAT10M);
	CHECK_EQ_INT(n, 3);
	if (chunks && n == 3) {
		check_hex(&chunks[0], XXH_PAT10M_C0);
		check_hex(&chunks[1], XXH_PAT10M_C1);
		check_hex(&chunks[2], XXH_PAT10M_C2);
	}
	free(chunks);
	close(fd);
	free(p);
}

/*
 * Checks that @got (@n hashes) holds hash_buf of each @slice-byte slice of @p (@len bytes, the
 * last slice short); @what names the slices in a failure.
 */
static void check_slices(const struct hash128 *got, size_t n, const uint8_t *p, size_t len,
			 size_t slice, const char *what)
{
	size_t want_n = (len + slice - 1) / slice;

	CHECK_EQ_INT(n, want_n);
	for (size_t i = 0; got && i < n && i < want_n; i++) {
		size_t off = i * slice;
		size_t slen = len - off < slice ? len - off : slice;
		struct hash128 ref = hash_buf(p + off, slen);

		if (!hash_equal(&got[i], &ref)) {
			fprintf(stderr, "size %zu %s %zu differs\n", len, what, i);
			CHECK(0);
		}
	}
}

/* Sizes around the chunk and buffer boundaries: chunks must equal hash_buf of each slice. */
static void test_fd_sizes(void)
{
	static const size_t sizes[] = {
		1, MIB - 1, MIB, MIB + 7, 4 * MIB - 1, 4 * MIB, 4 * MIB + 1, 8 * MIB, 9 * MIB + 123,
	};
	uint8_t *p = pattern(9 * MIB + 123);

	for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
		size_t len = sizes[k];
		int fd = make_file("sized", p, len);
		struct hash128 whole, ref, *chunks = NULL;
		size_t n = 0;
		uint64_t size = 0;

		CHECK_EQ_INT(hash_fd(fd, &whole, &size, &chunks, &n), 0);
		CHECK_EQ_INT(size, len);
		ref = hash_buf(p, len);
		CHECK(hash_equal(&whole, &ref));
		check_slices(chunks, n, p, len, HASH_CHUNK_SIZE, "chunk");
		free(chunks);
		close(fd);
	}
	free(p);
}

/* Block hashes: one per 64 KiB, each the hash of its slice, the tail block short. */
static void test_fd_blocks(void)
{
	static const size_t sizes[] = { 0,	   1,
					64 * 1024, 64 * 1024 + 1,
					MIB + 5,   4 * MIB + 64 * 1024 + 9 };
	uint8_t *p = pattern(4 * MIB + 64 * 1024 + 9);

	for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
		size_t len = sizes[k];
		int fd = make_file("sized", p, len);
		struct hash128 whole, ref, *chunks = NULL, *blocks = NULL;
		size_t n = 0, nb = 99;
		uint64_t size = 0;

		CHECK_EQ_INT(hash_fd_blocks(fd, &whole, &size, &chunks, &n, &blocks, &nb), 0);
		CHECK_EQ_INT(size, len);
		ref = hash_buf(p, len);
		CHECK(hash_equal(&whole, &ref));
		check_slices(blocks, nb, p, len, HASH_BLOCK_SIZE, "block");
		CHECK(len > 0 || blocks == NULL);
		free(blocks);
		free(chunks);
		close(fd);
	}
	free(p);
}

static void test_fd_without_chunks(void)
{
	size_t len = 5 * MIB + 3;
	uint8_t *p = pattern(len);
	int fd = make_file("nochunks", p, len);
	struct hash128 whole, ref = hash_buf(p, len);
	uint64_t size = 0;

	CHECK_EQ_INT(hash_fd(fd, &whole, &size, NULL, NULL), 0);
	CHECK_EQ_INT(size, len);
	CHECK(hash_equal(&whole, &ref));
	close(fd);
	free(p);
}

static void test_fd_errors(void)
{
	struct hash128 whole, *chunks = NULL;
	uint64_t size = 0;
	size_t n = 0;
	int fds[2], dfd;

	CHECK_EQ_INT(hash_fd(-1, &whole, &size, &chunks, &n), -EBADF);
	CHECK(chunks == NULL);
	dfd = open(tmpdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	CHECK_EQ_INT(hash_fd(dfd, &whole, &size, &chunks, &n), -EISDIR);
	CHECK(chunks == NULL);
	close(dfd);
	if (pipe(fds) == 0) {
		CHECK_EQ_INT(hash_fd(fds[0], &whole, &size, &chunks, &n), -ESPIPE);
		CHECK(chunks == NULL);
		close(fds[0]);
		close(fds[1]);
	}
}

static void test_format_parse(void)
{
	struct hash128 h = { .hi = 0x0123456789abcdefULL, .lo = 0xfedcba9876543210ULL }, back;
	char s[HASH_STR_LEN];

	hash_format(&h, s);
	CHECK_EQ_STR(s, "xxh3-128:0123456789abcdeffedcba9876543210");
	CHECK_EQ_INT(strlen(s), HASH_STR_LEN - 1);
	CHECK_EQ_INT(hash_parse(s, &back), 0);
	CHECK(hash_equal(&h, &back));

	h = (struct hash128){ 0, 1 };
	hash_format(&h, s);
	CHECK_EQ_STR(s, "xxh3-128:00000000000000000000000000000001");
	CHECK_EQ_INT(hash_parse(s, &back), 0);
	CHECK(back.hi == 0 && back.lo == 1);

	CHECK_EQ_INT(hash_parse("xxh3-128:" XXH_ABC, &back), 0);
	CHECK(back.hi == 0x06b05ab6733a6185ULL && back.lo == 0x78af5f94892f3950ULL);
}

static void test_parse_rejects(void)
{
	static const char *const bad[] = {
		"",
		XXH_ABC,					/* no prefix */
		"xxh128:" XXH_ABC,				/* wrong prefix */
		"XXH3-128:" XXH_ABC,				/* prefix case */
		"xxh3-64:" XXH_ABC,
		"xxh3-128:06b05ab6733a618578af5f94892f395",	/* 31 digits */
		"xxh3-128:06b05ab6733a618578af5f94892f39500",	/* 33 digits */
		"xxh3-128:06B05AB6733A618578AF5F94892F3950",	/* uppercase */
		"xxh3-128:06b05ab6733a618578af5f94892f395g",	/* not hex */
		"xxh3-128: 06b05ab6733a618578af5f94892f395",	/* space */
		"xxh3-128:06b05ab6733a618578af5f94892f3950\n",	/* trailing newline */
		"xxh3-128:",
		"xxh3-128:0x6b05ab6733a618578af5f94892f3950",
	};
	struct hash128 out = { 7, 7 };

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (hash_parse(bad[i], &out) != -EINVAL) {
			fprintf(stderr, "accepted bad hash \"%s\"\n", bad[i]);
			CHECK(0);
		}
	}
	CHECK_EQ_INT(hash_parse(NULL, &out), -EINVAL);
	CHECK(out.hi == 7 && out.lo == 7); /* untouched on failure */
}

static void test_bytes(void)
{
	struct hash128 h = { .hi = 0x0102030405060708ULL, .lo = 0x090a0b0c0d0e0f10ULL }, back;
	uint8_t b[16];

	hash_to_bytes(&h, b);
	for (int i = 0; i < 16; i++)
		CHECK_EQ_INT(b[i], i + 1);
	hash_from_bytes(b, &back);
	CHECK(hash_equal(&h, &back));
	CHECK(back.hi == h.hi && back.lo == h.lo);
}

static void test_equal(void)
{
	struct hash128 a = { 1, 2 }, b = { 1, 2 }, c = { 1, 3 }, d = { 0, 2 };

	CHECK(hash_equal(&a, &b));
	CHECK(!hash_equal(&a, &c));
	CHECK(!hash_equal(&a, &d));
}

/* Runs before main (TEST_MAIN owns main): one scratch directory for the whole run. */
__attribute__((constructor)) static void setup(void)
{
	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		exit(2);
	}
}

__attribute__((destructor)) static void teardown(void)
{
	static const char *const names[] = { "empty", "abc", "pat10m", "sized", "nochunks" };
	char path[256];

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", tmpdir, names[i]);
		unlink(path);
	}
	rmdir(tmpdir);
}

TEST_MAIN(TEST(test_buf_vectors), TEST(test_fd_empty), TEST(test_fd_abc),
	  TEST(test_fd_10mib_reference), TEST(test_fd_sizes), TEST(test_fd_blocks),
	  TEST(test_fd_without_chunks),
	  TEST(test_fd_errors), TEST(test_format_parse), TEST(test_parse_rejects),
	  TEST(test_bytes), TEST(test_equal))
