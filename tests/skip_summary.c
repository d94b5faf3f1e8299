/* See skip_summary.h. */
#include "tests/skip_summary.h"

#include <criterion/criterion.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* One distinct skip reason and the suites it hit (first appearance order).
 * Owned by skip_summary_print for the length of one call. */
struct skip_group {
    const char *reason;
    size_t count;
    size_t first_seen;          /* tie-break: order of first appearance */
    const char **suites;
    size_t suite_count;
};

static bool group_add_suite(struct skip_group *group, const char *suite)
{
    for (size_t i = 0; i < group->suite_count; i++)
        if (strcmp(group->suites[i], suite) == 0)
            return true;
    const char **grown = realloc(group->suites, (group->suite_count + 1) * sizeof(*grown));
    if (grown == NULL)
        return false;
    group->suites = grown;
    group->suites[group->suite_count++] = suite;
    return true;
}

size_t skip_summary_print(FILE *out, const struct criterion_global_stats *stats)
{
    size_t selected = 0, left_out = 0, skipped = 0, group_count = 0;
    struct skip_group *groups = NULL;
    bool out_of_memory = false;
    for (struct criterion_suite_stats *suite = stats->suites; suite != NULL; suite = suite->next) {
        for (struct criterion_test_stats *test = suite->tests; test != NULL; test = test->next) {
            /* Criterion marks tests that --filter leaves out as disabled
             * too: those are not skips of this run, only counted. */
            if (test->test != NULL && test->test->data != NULL && test->test->data->disabled) {
                left_out++;
                continue;
            }
            selected++;
            if (test->test_status != CR_STATUS_SKIPPED)
                continue;
            skipped++;
            const char *reason = test->message != NULL && test->message[0] != '\0' ? test->message
                                                                                     : SKIP_SUMMARY_NO_REASON;
            const char *suite_name = test->test != NULL && test->test->category != NULL ? test->test->category : "?";
            size_t i = 0;
            while (i < group_count && strcmp(groups[i].reason, reason) != 0)
                i++;
            if (i == group_count) {
                struct skip_group *grown = realloc(groups, (group_count + 1) * sizeof(*grown));
                if (grown == NULL) {
                    out_of_memory = true;
                    continue;
                }
                groups = grown;
                groups[group_count++] = (struct skip_group){ .reason = reason, .first_seen = i };
            }
            groups[i].count++;
            if (!group_add_suite(&groups[i], suite_name))
                out_of_memory = true;
        }
    }
    /* Most frequent first; equal counts keep their first appearance order
     * (insertion sort is stable and the lists are short). */
    for (size_t i = 1; i < group_count; i++) {
        struct skip_group moving = groups[i];
        size_t j = i;
        while (j > 0 && groups[j - 1].count < moving.count) {
            groups[j] = groups[j - 1];
            j--;
        }
        groups[j] = moving;
    }
    fprintf(out, "[====] Skipped: %zu of %zu selected tests did not run", skipped, selected);
    if (left_out > 0)
        fprintf(out, " (%zu more disabled or left out by --filter)", left_out);
    fputc('\n', out);
    for (size_t i = 0; i < group_count; i++) {
        fprintf(out, "[SKIP] %4zu x %s (suites: ", groups[i].count, groups[i].reason);
        for (size_t k = 0; k < groups[i].suite_count; k++)
            fprintf(out, "%s%s", k > 0 ? ", " : "", groups[i].suites[k]);
        fputs(")\n", out);
        free(groups[i].suites);
    }
    if (out_of_memory)
        fputs("[SKIP] (out of memory while grouping: some reasons are missing above)\n", out);
    free(groups);
    fflush(out);
    return skipped;
}
