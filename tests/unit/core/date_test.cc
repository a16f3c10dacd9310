#include "ringmail/core/date.h"

#include <gtest/gtest.h>

namespace ringmail::core {
namespace {

TEST(rfc5322_date, known_dates) {
    EXPECT_EQ(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
    EXPECT_EQ(rfc5322_date(951782400), "Tue, 29 Feb 2000 00:00:00 +0000");   // leap day
    EXPECT_EQ(rfc5322_date(1795478399), "Mon, 23 Nov 2026 23:59:59 +0000");  // end of a day
    EXPECT_EQ(rfc5322_date(4102444800), "Fri, 01 Jan 2100 00:00:00 +0000");  // past 2038
}

}  // namespace
}  // namespace ringmail::core
