/* unit.h — what every C unit-test file shares: cmocka, and the one-line way a test file hands
 * its group to unit_main.c, which needs the number of tests because cmocka reports only
 * failures. */
#ifndef RELAY_UNIT_H
#define RELAY_UNIT_H

/* cmocka.h needs these first. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

/* In a test file:
 *   int run_config_tests(size_t *test_count)
 *   {
 *       const struct CMUnitTest tests[] = {cmocka_unit_test(test_defaults), ...};
 *       return UNIT_RUN_GROUP("config", tests, NULL, NULL, test_count);
 *   }
 * and one line GROUP(config) in unit_main.c. Returns the number of failed tests. */
#define UNIT_RUN_GROUP(name, tests, group_setup, group_teardown, test_count)                       \
    (*(test_count) = sizeof(tests) / sizeof((tests)[0]),                                           \
     cmocka_run_group_tests_name((name), (tests), (group_setup), (group_teardown)))

#endif
