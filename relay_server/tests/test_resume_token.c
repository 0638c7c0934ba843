/* test_resume_token.c — resume tokens against the shared vector in tests/vectors/protocol.json,
 * what they must not match, and the relay secret file (created 0600, reused, size-checked). */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core_harness.h"
#include "resume_token.h"
#include "unit.h"

static void test_token_matches_vector(void **state)
{
    json_t *vectors = harness_protocol_vectors();
    json_t *vector = json_object_get(vectors, "resume_token");
    unsigned char secret[64];
    size_t secret_length = harness_unhex(json_text(vector, "secret_hex"), secret, sizeof secret);
    const char *code = json_text(vector, "room_code"), *user = json_text(vector, "user_id");
    const char *expected = json_text(vector, "token_hex");
    char token[RESUME_TOKEN_HEX_LENGTH + 1];
    assert_true(resume_token_make(secret, secret_length, code, user, token));
    assert_string_equal(token, expected);
    assert_true(resume_token_check(secret, secret_length, code, user, expected));
    enum resume_role role = RESUME_HOST;
    assert_true(resume_token_verify(secret, secret_length, code, user, expected, &role));
    assert_int_equal(role, RESUME_MEMBER);

    /* The room creator's token, and the role it proves; a member token is not a host token. */
    const char *host_expected = json_text(vector, "host_token_hex");
    assert_true(resume_token_make_as(secret, secret_length, code, user, RESUME_HOST, token));
    assert_string_equal(token, host_expected);
    assert_true(resume_token_verify(secret, secret_length, code, user, host_expected, &role));
    assert_int_equal(role, RESUME_HOST);
    assert_false(resume_token_verify(secret, secret_length, code, "alicf", host_expected, &role));

    /* Anything else is refused: other user, other room, other secret, altered or cut token. */
    assert_false(resume_token_check(secret, secret_length, code, "alicf", expected));
    assert_false(resume_token_check(secret, secret_length, "K7QX2N", user, expected));
    secret[0] ^= 1;
    assert_false(resume_token_check(secret, secret_length, code, user, expected));
    secret[0] ^= 1;
    char altered[RESUME_TOKEN_HEX_LENGTH + 2];
    snprintf(altered, sizeof altered, "%s", expected);
    altered[63] = altered[63] == '0' ? '1' : '0';
    assert_false(resume_token_check(secret, secret_length, code, user, altered));
    snprintf(altered, sizeof altered, "%.63s", expected);
    assert_false(resume_token_check(secret, secret_length, code, user, altered));
    snprintf(altered, sizeof altered, "%s0", expected);
    assert_false(resume_token_check(secret, secret_length, code, user, altered));
    assert_false(resume_token_check(secret, secret_length, code, user, ""));
    json_decref(vectors);
}

static void test_longest_user_id(void **state)
{
    unsigned char secret[RELAY_SECRET_BYTES] = {1};
    char user[129];
    memset(user, 'u', 128);
    user[128] = '\0';
    char token[RESUME_TOKEN_HEX_LENGTH + 1], other[RESUME_TOKEN_HEX_LENGTH + 1];
    assert_true(resume_token_make(secret, sizeof secret, "ABCDEF", user, token));
    user[127] = 'v'; /* the last byte counts */
    assert_true(resume_token_make(secret, sizeof secret, "ABCDEF", user, other));
    assert_string_not_equal(token, other);
}

static char scratch[64];

static int make_scratch(void **state)
{
    snprintf(scratch, sizeof scratch, "/tmp/relay-secret-test-XXXXXX");
    return mkdtemp(scratch) ? 0 : -1;
}

static int remove_scratch(void **state)
{
    char path[128];
    const char *names[] = {"secret", "short"};
    for (size_t i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s/%s", scratch, names[i]);
        unlink(path);
    }
    return rmdir(scratch);
}

static void test_secret_file_created_private_and_reused(void **state)
{
    char path[128], error[256] = "";
    snprintf(path, sizeof path, "%s/secret", scratch);
    unsigned char first[RELAY_SECRET_BYTES], second[RELAY_SECRET_BYTES];
    assert_true(relay_secret_load(path, first, error, sizeof error));
    struct stat info;
    assert_int_equal(stat(path, &info), 0);
    assert_int_equal(info.st_mode & 0777, 0600);
    assert_int_equal(info.st_size, RELAY_SECRET_BYTES);
    assert_true(relay_secret_load(path, second, error, sizeof error));
    assert_memory_equal(first, second, RELAY_SECRET_BYTES);
    /* Without a file: a random secret each time. */
    assert_true(relay_secret_load("", first, error, sizeof error));
    assert_true(relay_secret_load(NULL, second, error, sizeof error));
    assert_memory_not_equal(first, second, RELAY_SECRET_BYTES);
}

static void test_secret_file_of_wrong_size_is_an_error(void **state)
{
    char path[128], error[256] = "";
    snprintf(path, sizeof path, "%s/short", scratch);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "0123456789", 10), 10);
    close(fd);
    unsigned char secret[RELAY_SECRET_BYTES];
    assert_false(relay_secret_load(path, secret, error, sizeof error));
    assert_non_null(strstr(error, "secret file"));
    assert_non_null(strstr(error, path));
    snprintf(path, sizeof path, "%s/no/such/dir/secret", scratch);
    error[0] = '\0';
    assert_false(relay_secret_load(path, secret, error, sizeof error));
    assert_true(strlen(error) > 0);
}

int run_resume_token_tests(size_t *test_count)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_token_matches_vector),
        cmocka_unit_test(test_longest_user_id),
        cmocka_unit_test(test_secret_file_created_private_and_reused),
        cmocka_unit_test(test_secret_file_of_wrong_size_is_an_error),
    };
    return UNIT_RUN_GROUP("resume_token", tests, make_scratch, remove_scratch, test_count);
}
