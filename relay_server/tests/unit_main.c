/* unit_main.c — runs every cmocka group of the relay's C unit tests and ends with the line
 * "N passed, N failed" that scripts/run_tests.py reads. Exits non-zero if any test failed.
 *   build/unit_tests            every group
 *   build/unit_tests config     only the named groups */
#include <stdio.h>
#include <string.h>

#include "unit.h"

/* To add a group: write run_<name>_tests in tests/test_<name>.c and add GROUP(<name>) here. */
#define UNIT_GROUPS(GROUP)                                                                         \
    GROUP(config)                                                                                  \
    GROUP(log)                                                                                     \
    GROUP(core)                                                                                    \
    GROUP(identity)                                                                                \
    GROUP(quota)                                                                                   \
    GROUP(send_queue)                                                                              \
    GROUP(frame_header)                                                                            \
    GROUP(protocol_constants)                                                                      \
    GROUP(rate_limit)                                                                              \
    GROUP(resume_token)                                                                            \
    GROUP(state_dir)                                                                               \
    GROUP(rfc6455)                                                                                 \
    GROUP(refusal_log)                                                                             \
    GROUP(cluster)                                                                                 \
    GROUP(cluster_core)

#define DECLARE_GROUP(name) int run_##name##_tests(size_t *test_count);
UNIT_GROUPS(DECLARE_GROUP)

struct unit_group {
    const char *name;
    int (*run)(size_t *test_count);
};

#define LIST_GROUP(name) {#name, run_##name##_tests},
static const struct unit_group groups[] = {UNIT_GROUPS(LIST_GROUP)};

static int selected(const char *name, int argc, char **argv)
{
    if (argc < 2)
        return 1;
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], name) == 0)
            return 1;
    return 0;
}

int main(int argc, char **argv)
{
    size_t passed = 0, failed = 0, groups_run = 0;
    for (size_t i = 0; i < sizeof groups / sizeof groups[0]; i++) {
        if (!selected(groups[i].name, argc, argv))
            continue;
        size_t test_count = 0;
        int failures = groups[i].run(&test_count);
        /* cmocka counts a failed group setup as every test failing, so clamp rather than
         * report negative passes. */
        size_t group_failed = failures > 0 ? (size_t)failures : 0;
        if (group_failed > test_count)
            test_count = group_failed;
        passed += test_count - group_failed;
        failed += group_failed;
        groups_run++;
    }
    if (groups_run == 0) {
        fprintf(stderr, "no test group matches; groups are:");
        for (size_t i = 0; i < sizeof groups / sizeof groups[0]; i++)
            fprintf(stderr, " %s", groups[i].name);
        fprintf(stderr, "\n");
        return 2;
    }
    printf("%zu passed, %zu failed\n", passed, failed);
    fflush(stdout); /* LeakSanitizer may exit without flushing */
    return failed == 0 ? 0 : 1;
}
