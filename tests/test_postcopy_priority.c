/*
 * migration/postcopy_priority.h (ringvm --postcopy-fifo) without KVM: the
 * start-up check, a thread moving itself to SCHED_FIFO, and the refusals
 * with their exact messages. Criterion runs every test in a process of its
 * own, so a test may change its threads' scheduling and drop its own
 * CAP_SYS_NICE. The tests that need SCHED_FIFO to be permitted skip with
 * the reason where it is not (the refusal tests run everywhere).
 */
#include <criterion/criterion.h>
#include <criterion/redirect.h>
#include <errno.h>
#include <linux/capability.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "migration/postcopy_priority.h"
#include "tests/harness.h"

/* This process may no longer use real-time classes: CAP_SYS_NICE out of
 * its effective set, RLIMIT_RTPRIO 0. */
static void forbid_realtime(void)
{
    struct __user_cap_header_struct header = { .version = _LINUX_CAPABILITY_VERSION_3, .pid = 0 };
    struct __user_cap_data_struct data[2];
    cr_assert_eq(syscall(SYS_capget, &header, data), 0, "capget: %s", strerror(errno));
    data[CAP_TO_INDEX(CAP_SYS_NICE)].effective &= ~CAP_TO_MASK(CAP_SYS_NICE);
    cr_assert_eq(syscall(SYS_capset, &header, data), 0, "capset: %s", strerror(errno));
    struct rlimit none = { .rlim_cur = 0, .rlim_max = 0 };
    cr_assert_eq(setrlimit(RLIMIT_RTPRIO, &none), 0, "setrlimit(RLIMIT_RTPRIO, 0): %s", strerror(errno));
}

static void skip_unless_fifo_permitted(unsigned priority)
{
    char error[300];
    if (postcopy_priority_check(priority, error, sizeof(error)) != 0)
        harness_skip("SCHED_FIFO is not permitted to this process: %s", error);
}

Test(postcopy_priority, off_by_default_and_apply_then_changes_nothing)
{
    cr_assert_eq(postcopy_priority_get(), 0);
    cr_assert_eq(postcopy_priority_apply("pc-test"), 0);
    cr_assert_eq(sched_getscheduler(0), SCHED_OTHER);
}

Test(postcopy_priority, the_check_leaves_the_caller_on_its_class)
{
    skip_unless_fifo_permitted(10);
    cr_assert_eq(sched_getscheduler(0), SCHED_OTHER, "the check ran on a thread of its own");
    cr_assert_eq(postcopy_priority_get(), 0, "checking configures nothing");
}

Test(postcopy_priority, apply_moves_the_calling_thread_to_fifo_at_the_configured_priority)
{
    skip_unless_fifo_permitted(7);
    postcopy_priority_set(7);
    cr_assert_eq(postcopy_priority_get(), 7);
    cr_assert_eq(postcopy_priority_apply("pc-test"), 0);
    cr_assert_eq(sched_getscheduler(0), SCHED_FIFO);
    struct sched_param parameters;
    cr_assert_eq(sched_getparam(0, &parameters), 0);
    cr_assert_eq(parameters.sched_priority, 7);
}

Test(postcopy_priority, the_check_refuses_priorities_outside_linux_range)
{
    char error[300] = "";
    cr_assert_eq(postcopy_priority_check(0, error, sizeof(error)), -EINVAL);
    cr_assert_str_eq(error, "SCHED_FIFO priority 0 is outside 1..99");
    cr_assert_eq(postcopy_priority_check(100, error, sizeof(error)), -EINVAL);
    cr_assert_str_eq(error, "SCHED_FIFO priority 100 is outside 1..99");
}

Test(postcopy_priority, the_check_names_what_would_grant_it)
{
    forbid_realtime();
    char error[300] = "";
    cr_assert_eq(postcopy_priority_check(10, error, sizeof(error)), -EPERM);
    cr_assert_str_eq(error, "sched_setscheduler(SCHED_FIFO, priority 10): Operation not permitted (needs "
                            "CAP_SYS_NICE or an RLIMIT_RTPRIO of at least 10; RLIMIT_RTPRIO is 0)");
}

/* A refusal at a thread's start (permissions changed after the check):
 * the thread stays on the fair class and the first refusal is printed,
 * once per process. */
Test(postcopy_priority, a_refused_apply_keeps_the_fair_class_and_says_so_once, .init = cr_redirect_stderr)
{
    forbid_realtime();
    postcopy_priority_set(5);
    cr_assert_eq(postcopy_priority_apply("pc-fault"), -EPERM);
    cr_assert_eq(postcopy_priority_apply("pc-urgent"), -EPERM);
    cr_assert_eq(sched_getscheduler(0), SCHED_OTHER);
    fflush(stderr);
    cr_assert_stderr_eq_str("ringvm: pc-fault: sched_setscheduler(SCHED_FIFO, priority 5): Operation not "
                            "permitted (needs CAP_SYS_NICE or an RLIMIT_RTPRIO of at least 5; RLIMIT_RTPRIO is "
                            "0): it runs on the fair class\n");
}

/* The background stream's threads: nice -10 while post-copy runs, only
 * with the option on, and back after. */
Test(postcopy_priority, the_stream_threads_get_nice_minus_ten_only_with_the_option)
{
    cr_assert_eq(setpriority(PRIO_PROCESS, 0, 0), 0);
    cr_assert_eq(postcopy_priority_boost_stream(0, "migration"), POSTCOPY_STREAM_UNCHANGED, "option off");
    cr_assert_eq(getpriority(PRIO_PROCESS, 0), 0);
    skip_unless_fifo_permitted(3);
    postcopy_priority_set(3);
    cr_assert_eq(setpriority(PRIO_PROCESS, 0, 5), 0);
    int before = postcopy_priority_boost_stream(0, "migration");
    cr_assert_eq(before, 5, "the value to restore");
    cr_assert_eq(getpriority(PRIO_PROCESS, 0), POSTCOPY_STREAM_NICE);
    cr_assert_eq(postcopy_priority_boost_stream(0, "migration"), POSTCOPY_STREAM_UNCHANGED,
                 "already there: nothing to restore twice");
    postcopy_priority_restore_stream(0, before);
    cr_assert_eq(getpriority(PRIO_PROCESS, 0), 5);
    postcopy_priority_restore_stream(0, POSTCOPY_STREAM_UNCHANGED);
    cr_assert_eq(getpriority(PRIO_PROCESS, 0), 5);
    /* Another thread, by its id (how the source boosts mig-send). */
    cr_assert_eq(postcopy_priority_boost_stream((int)gettid(), "mig-send"), 5);
    cr_assert_eq(getpriority(PRIO_PROCESS, (id_t)gettid()), POSTCOPY_STREAM_NICE);
}

Test(postcopy_priority, a_refused_stream_boost_leaves_the_nice_value_and_says_so_once, .init = cr_redirect_stderr)
{
    cr_assert_eq(setpriority(PRIO_PROCESS, 0, 0), 0);
    forbid_realtime();
    struct rlimit none = { .rlim_cur = 0, .rlim_max = 0 };
    cr_assert_eq(setrlimit(RLIMIT_NICE, &none), 0);
    postcopy_priority_set(5);
    cr_assert_eq(postcopy_priority_boost_stream(0, "mig-incoming"), POSTCOPY_STREAM_UNCHANGED);
    cr_assert_eq(postcopy_priority_boost_stream(0, "migration"), POSTCOPY_STREAM_UNCHANGED);
    cr_assert_eq(getpriority(PRIO_PROCESS, 0), 0);
    fflush(stderr);
    cr_assert_stderr_eq_str("ringvm: mig-incoming: setpriority(nice -10): Permission denied (needs CAP_SYS_NICE "
                            "or an RLIMIT_NICE of at least 30): it runs at nice 0\n");
}

/* ringvm --postcopy-fifo checks at start and refuses what it may not have
 * (exit 2, before /dev/kvm is opened): run where CAP_SYS_NICE is gone from
 * the bounding set too, so the exec'ed ringvm cannot regain it as root. */
Test(postcopy_priority, ringvm_refuses_a_priority_it_may_not_have_at_start)
{
    forbid_realtime();
    if (prctl(PR_CAPBSET_DROP, CAP_SYS_NICE, 0, 0, 0) != 0 && errno != EPERM)
        cr_assert_fail("prctl(PR_CAPBSET_DROP, CAP_SYS_NICE): %s", strerror(errno));
    char *argv[] = { (char *)harness_program("ringvm"), "--postcopy-fifo", "5", "--memory", "16M", NULL };
    struct harness_process process;
    harness_spawn(&process, argv);
    int status = harness_process_wait_exit(&process, 10000);
    cr_assert_eq(status, 2, "exit %d, stderr: %s", status, process.err);
    cr_assert_str_eq(process.err, "ringvm: --postcopy-fifo 5: sched_setscheduler(SCHED_FIFO, priority 5): Operation "
                                  "not permitted (needs CAP_SYS_NICE or an RLIMIT_RTPRIO of at least 5; "
                                  "RLIMIT_RTPRIO is 0)\n");
    harness_process_free(&process);
}
