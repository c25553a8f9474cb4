/*
 * fs — the FUSE low-level binding of meshfs: translates requests into namespace and xattr
 * calls and nothing else. It is the only code that includes <fuse_lowlevel.h>.
 */
#ifndef MESHFS_FS_H
#define MESHFS_FS_H

#include <stdbool.h>

struct daemon;
struct fs_ctx;

/* Creates the FUSE session for daemon @d (not mounted yet). @fuse_opts is a comma-separated
 * -o list added after meshfs's own options; may be NULL. 0 or -errno. */
int fs_new(struct daemon *d, const char *fuse_opts, struct fs_ctx **out);

/* Mounts at @mountpoint. 0 or -errno. */
int fs_mount(struct fs_ctx *fs, const char *mountpoint);

/* Serves requests until unmount or SIGTERM/SIGINT/SIGHUP; returns 0 after a clean stop. */
int fs_loop(struct fs_ctx *fs);

/* Unmounts (if mounted) and frees the session. */
void fs_destroy(struct fs_ctx *fs);

/* Entry points of the commands that fs/ implements (argv[0] is the command name). */
int mount_main(int argc, char **argv);

#endif
