/*
 * The file behind shareable guest RAM: a sealed memfd, or an unlinked file
 * on a detached tmpfs instance mounted huge=advise (vmm/ram_file.h says
 * when and why).
 */
#include "vmm/ram_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <unistd.h>
#include <linux/magic.h>
#include <linux/mount.h>

#ifndef MFD_HUGETLB
#define MFD_HUGETLB 0x0004U
#endif
#ifndef MFD_HUGE_2MB
#define MFD_HUGE_2MB (21U << 26)
#endif

#define RAM_FILE_NAME "ringvm-guest-ram"

/* A tmpfs instance of our own, never attached to a mount namespace: the
 * new mount API returns a detached mount as an fd, and the file made on it
 * keeps the instance alive after both fds are closed. huge=advise: the
 * mapping's MADV_HUGEPAGE decides, so --no-thp still means 4 KiB pages;
 * size=0: no limit beyond memory, as a memfd; noexec, nosuid, nodev: it
 * holds RAM, nothing else. Returns the file's fd or -errno. */
static int create_tmpfs_file(uint64_t size)
{
#if defined(SYS_fsopen) && defined(SYS_fsconfig) && defined(SYS_fsmount)
    int context = (int)syscall(SYS_fsopen, "tmpfs", FSOPEN_CLOEXEC);
    if (context < 0)
        return -errno;
    int result = 0;
    if (syscall(SYS_fsconfig, context, FSCONFIG_SET_STRING, "huge", "advise", 0) != 0 ||
        syscall(SYS_fsconfig, context, FSCONFIG_SET_STRING, "size", "0", 0) != 0 ||
        syscall(SYS_fsconfig, context, FSCONFIG_SET_STRING, "mode", "0700", 0) != 0 ||
        syscall(SYS_fsconfig, context, FSCONFIG_CMD_CREATE, NULL, NULL, 0) != 0) {
        result = -errno;
        close(context);
        return result;
    }
    int mount = (int)syscall(SYS_fsmount, context, FSMOUNT_CLOEXEC,
                             MOUNT_ATTR_NOEXEC | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV);
    result = mount < 0 ? -errno : 0;
    close(context);
    if (result != 0)
        return result;
    /* A name while it exists (so /proc/PID/fd says what it is), unlinked
     * at once: from then on only fds reach it. */
    int fd = openat(mount, RAM_FILE_NAME, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 || unlinkat(mount, RAM_FILE_NAME, 0) != 0)
        result = -errno;
    else if (ftruncate(fd, (off_t)size) != 0)
        result = -errno;
    close(mount);
    if (result != 0) {
        if (fd >= 0)
            close(fd);
        return result;
    }
    return fd;
#else
    (void)size;
    return -ENOSYS;
#endif
}

int ram_file_create(uint64_t size, bool hugepages, bool try_tmpfs, enum ram_file_kind *kind, int *tmpfs_errno,
                    const char **failed_call)
{
    *tmpfs_errno = 0;
    if (try_tmpfs && !hugepages) {
        int fd = create_tmpfs_file(size);
        if (fd >= 0) {
            *kind = RAM_FILE_TMPFS;
            return fd;
        }
        *tmpfs_errno = -fd;
    }
    /* Sealable: a local hand-over (migration/memfd_transfer.h) passes this
     * fd to another process, which must be sure the RAM can never shrink
     * under its mapping (a SIGBUS on a guest access) or grow. */
    unsigned flags = MFD_CLOEXEC | MFD_ALLOW_SEALING | (hugepages ? MFD_HUGETLB | MFD_HUGE_2MB : 0);
    int fd = memfd_create(RAM_FILE_NAME, flags);
    if (fd < 0) {
        *failed_call = "memfd_create";
        return -errno;
    }
    const char *call = NULL;
    if (ftruncate(fd, (off_t)size) != 0)
        call = "ftruncate";
    else if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0)
        call = "fcntl(F_ADD_SEALS shrink|grow|seal)";
    if (call != NULL) {
        int saved = errno;
        close(fd);
        *failed_call = call;
        return -saved;
    }
    *kind = hugepages ? RAM_FILE_HUGETLBFS : RAM_FILE_MEMFD;
    return fd;
}

enum ram_file_kind ram_file_identify(int fd)
{
    struct stat status;
    struct statfs filesystem;
    if (fstat(fd, &status) != 0 || fstatfs(fd, &filesystem) != 0 || !S_ISREG(status.st_mode))
        return RAM_FILE_NONE;
    char link[64], target[256];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    ssize_t length = readlink(link, target, sizeof(target) - 1);
    if (length < 0)
        return RAM_FILE_NONE;
    target[length] = '\0';      /* readlink does not terminate */
    bool memfd = strncmp(target, "/memfd:", 7) == 0;
    if ((unsigned long)filesystem.f_type == (unsigned long)HUGETLBFS_MAGIC)
        return memfd ? RAM_FILE_HUGETLBFS : RAM_FILE_NONE;
    if ((unsigned long)filesystem.f_type != (unsigned long)TMPFS_MAGIC)
        return RAM_FILE_NONE;
    if (memfd)
        return RAM_FILE_MEMFD;
    /* A file some path still names (in /dev/shm, say) anyone with access
     * to the path could truncate under the mapping. */
    return status.st_nlink == 0 ? RAM_FILE_TMPFS : RAM_FILE_NONE;
}

const char *ram_file_kind_name(enum ram_file_kind kind)
{
    switch (kind) {
    case RAM_FILE_MEMFD: return "memfd";
    case RAM_FILE_HUGETLBFS: return "hugetlbfs";
    case RAM_FILE_TMPFS: return "tmpfs";
    case RAM_FILE_NONE: break;
    }
    return "anonymous";
}
