/*
 * Two emulated hosts for a test: tests/netns/hosts.sh's network namespaces
 * "src" and "dst" joined by a veth pair, driven from C. Shared by the test
 * files that migrate between them (tests/test_faults.c,
 * tests/test_linux_vm.c); compiled into the test binary.
 *
 * One pair per test process (Criterion runs each test in its own
 * process): hosts_up brings it up and remembers its name, hosts_down (the
 * test's .fini, so also when the test fails) removes it. A test killed
 * before its fini leaves namespaces that the next hosts.sh up sweeps
 * (--owner).
 */
#ifndef RINGVM_TESTS_NETNS_HOSTS_H
#define RINGVM_TESTS_NETNS_HOSTS_H

#include <stdbool.h>
#include <stddef.h>

/* Relative to the repository root, where the tests run. */
#define HOSTS_SCRIPT "tests/netns/hosts.sh"

/* Runs `sh -c COMMAND` (printf-style); returns its exit status, 128 when it
 * did not exit normally. */
__attribute__((format(printf, 1, 2)))
int hosts_shell(const char *format, ...);

/* Skips the test (harness_skip, with the reason) without /dev/kvm, root,
 * the script, iproute2 or nftables. */
void hosts_require(void);

/* Brings the pair `name` (at most 15 characters: namespace and device
 * names derive from it) up, owned by this process, with hosts.sh's link
 * options `options` ("" for none, e.g. "--rate 1gbit"); the test fails if
 * hosts.sh does. Call hosts_require first. */
void hosts_up(const char *name, const char *options);

/* Removes the pair hosts_up brought up, if any; calling it again does
 * nothing. */
void hosts_down(void);

/* The name of the pair that is up, "" when none. */
const char *hosts_name(void);

/* The address of host `side` ("src" or "dst") on the link, or with
 * `delayed` on the delayed link (hosts.sh delay), into out. */
void hosts_address(const char *side, bool delayed, char *out, size_t size);

/* Stores the words that run a command inside host `side` (`hosts.sh exec
 * NAME SIDE`) at argv[0..] and returns how many (4); 0 when side is NULL
 * (the command runs in this namespace). */
unsigned hosts_exec_prefix(char **argv, const char *side);

#endif
