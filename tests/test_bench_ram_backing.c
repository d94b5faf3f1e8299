/*
 * bench/ram-backing end to end, no KVM needed: ringvm's own frame builder,
 * sender and receiver move guest RAM over a socketpair twice and the bench
 * checks the destination's RAM equals the source's (it exits 1 otherwise).
 * What this asserts is that it runs and reports what it ran, not a speed.
 */
#include <criterion/criterion.h>

#include <jansson.h>
#include <string.h>
#include <unistd.h>

#include "tests/harness.h"

static const char *ram_backing_program(void)
{
    const char *path = harness_program("bench/ram-backing");
    if (access(path, X_OK) != 0)
        harness_skip("%s not built (make all)", path);
    return path;
}

Test(bench_ram_backing, moves_all_of_guest_ram_twice_per_backing_and_reports_each, .timeout = 120)
{
    struct harness_process process;
    char *argv[] = { (char *)ram_backing_program(), "--memory", "64M", "--reps", "2", "--backings", "anon,4k-bare,4k",
                     "--json", NULL };
    harness_spawn(&process, argv);
    cr_assert_eq(harness_process_wait_exit(&process, 100000), 0, "stderr: %s", process.err);
    json_error_t error;
    json_t *root = json_loads(process.out, 0, &error);
    cr_assert_not_null(root, "not JSON (%s): %s", error.text, process.out);
    cr_assert_str_eq(json_string_value(json_object_get(root, "bench")), "ram-backing");
    cr_assert_eq(json_integer_value(json_object_get(root, "memory_bytes")), 64ll << 20);
    cr_assert_eq(json_integer_value(json_object_get(root, "reps")), 2);
    json_t *rows = json_object_get(root, "backings");
    cr_assert_eq(json_array_size(rows), 3, "%s", process.out);
    static const char *const names[] = { "4k", "4k-bare", "anon" };     /* the bench's order, not the option's */
    static const char *const files[] = { "memfd", "memfd", "anonymous" };  /* 4 KiB pages: no tmpfs tried */
    for (size_t i = 0; i < 3; i++) {
        json_t *row = json_array_get(rows, i);
        cr_assert_str_eq(json_string_value(json_object_get(row, "backing")), names[i]);
        cr_assert_str_eq(json_string_value(json_object_get(row, "ram_file")), files[i]);
        cr_assert_eq(json_array_size(json_object_get(row, "first_pass_mibs")), 2);
        cr_assert_eq(json_array_size(json_object_get(row, "second_pass_mibs")), 2);
        cr_assert_gt(json_real_value(json_object_get(row, "first_pass_median_mibs")), 0);
        cr_assert_gt(json_real_value(json_object_get(row, "second_pass_median_mibs")), 0);
    }
    cr_assert_float_eq(json_real_value(json_object_get(json_array_get(rows, 0), "first_pass_ratio_to_4k")), 1.0,
                       1e-9);
    json_decref(root);
    harness_process_free(&process);
}

Test(bench_ram_backing, a_backing_this_host_cannot_give_is_left_out_with_the_reason, .timeout = 60)
{
    struct harness_process process;
    /* 16 GiB per side of huge pages: more than any of these hosts reserves. */
    char *argv[] = { (char *)ram_backing_program(), "--memory", "16G", "--reps", "1", "--backings", "2m", "--json",
                     NULL };
    harness_spawn(&process, argv);
    cr_assert_eq(harness_process_wait_exit(&process, 50000), 0, "stderr: %s", process.err);
    json_t *root = json_loads(process.out, 0, NULL);
    cr_assert_not_null(root, "%s", process.out);
    json_t *row = json_array_get(json_object_get(root, "backings"), 0);
    cr_assert_str_eq(json_string_value(json_object_get(row, "backing")), "2m");
    const char *reason = json_string_value(json_object_get(row, "skipped"));
    cr_assert_not_null(reason, "%s", process.out);
    cr_assert(strncmp(reason, "needs 16384 free 2 MiB huge pages, ", 35) == 0, "%s", reason);
    cr_assert_null(json_object_get(row, "first_pass_mibs"));
    json_decref(root);
    harness_process_free(&process);
}

Test(bench_ram_backing, an_unknown_backing_exits_2_naming_it)
{
    struct harness_process process;
    char *argv[] = { (char *)ram_backing_program(), "--backings", "4k,64k", NULL };
    harness_spawn(&process, argv);
    cr_assert_eq(harness_process_wait_exit(&process, 10000), 2);
    cr_assert_str_eq(process.err, "bench/ram-backing: --backings '4k,64k': unknown backing '64k' "
                                  "(4k, 4k-prealloc, 4k-bare, thp, 2m, anon, anon-thp)\n");
    cr_assert_str_eq(process.out, "");
    harness_process_free(&process);
}
