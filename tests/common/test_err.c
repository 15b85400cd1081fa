#include <criterion/criterion.h>
#include <string.h>

#include "common/err.h"

/* Every named error must be distinguishable in logs and protocol replies. */
Test(err, named_codes_have_distinct_names_and_messages)
{
    int named = 0;
    for (int a = -100; a <= 0; a++) {
        if (strcmp(spec_errname(a), "SPEC_E_UNKNOWN") == 0)
            continue;
        named++;
        cr_assert_str_neq(spec_strerror(a), "unknown error", "code %d has a name but no message", a);
        for (int b = a + 1; b <= 0; b++) {
            if (strcmp(spec_errname(b), "SPEC_E_UNKNOWN") == 0)
                continue;
            cr_assert_str_neq(spec_errname(a), spec_errname(b));
            cr_assert_str_neq(spec_strerror(a), spec_strerror(b));
        }
    }
    cr_assert_geq(named, 18);
    cr_assert_str_eq(spec_errname(SPEC_E_TRUNCATED), "SPEC_E_TRUNCATED");
}

Test(err, unknown_code_is_reported_as_unknown_not_null)
{
    cr_assert_str_eq(spec_strerror(-9999), "unknown error");
    cr_assert_str_eq(spec_errname(12345), "SPEC_E_UNKNOWN");
}
