/*
 * badabi.c -- a test module built for a future ABI major: the loader must
 * refuse it with one line naming the file.
 */
#include <ternd/ternd.h>

TN_API const struct tn_module ternd_module = {
    ((TN_ABI_MAJOR + 1) << 16) | 0, (uint32_t)sizeof(struct tn_module), "badabi", "1.0",
    NULL, NULL, 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
};
