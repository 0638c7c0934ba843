/* unit_main.c — runs every cmocka group of the extension's C unit tests and ends with the line
 * "N passed, N failed" that scripts/run_tests.py reads (cmocka itself reports only failures).
 * Exits non-zero if any test failed. */
#include <stdio.h>

#include "unit.h" /* relay_server/tests/unit.h: UNIT_RUN_GROUP */

int run_ws_client_tests(size_t *test_count);
int run_transport_core_tests(size_t *test_count);
int run_utf8_tests(size_t *test_count);
int run_tls_client_tests(size_t *test_count);
int run_transfer_assembly_tests(size_t *test_count);
int run_block_cache_tests(size_t *test_count);

int main(void)
{
    int (*const groups[])(size_t *) = {
        run_ws_client_tests,  run_transport_core_tests,    run_utf8_tests,
        run_tls_client_tests, run_transfer_assembly_tests, run_block_cache_tests};
    size_t passed = 0, failed = 0;
    for (size_t i = 0; i < sizeof groups / sizeof groups[0]; i++) {
        size_t test_count = 0;
        int failures = groups[i](&test_count);
        size_t group_failed = failures > 0 ? (size_t)failures : 0;
        if (group_failed > test_count)
            test_count = group_failed; /* a failed group setup counts every test */
        passed += test_count - group_failed;
        failed += group_failed;
    }
    printf("%zu passed, %zu failed\n", passed, failed);
    fflush(stdout); /* LeakSanitizer may exit without flushing */
    return failed == 0 ? 0 : 1;
}
