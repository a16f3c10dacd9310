// GET /: the status page, one self-contained HTML document compiled into the binary (no
// external asset: styles, script and the inline-SVG charts are in it). It asks for the bearer
// token when the API answers 401 (kept in the tab's sessionStorage) and sends it as the
// Authorization header of its fetches of /metrics and /api/v1/queue, every 2 seconds.
#pragma once

#include <string_view>

namespace ringmail::admin {

std::string_view status_page_html() noexcept;

}  // namespace ringmail::admin
