#include "sink/tls_transform.h"

#include "ringmail/tls/errc.h"

namespace ringmail::sink {

result<void> tls_transform::decode(std::string_view wire, std::string& plain) {
    _tls.feed(wire);
    _tls.step();
    if (!_tls.failed())
        _tls.read(plain);  // at most max_read: the recv buffer it came from is much smaller
    if (_tls.failed())
        return failure(_tls.error_code());
    return {};
}

result<void> tls_transform::encode(std::string_view plain, std::string& wire) {
    while (!plain.empty()) {
        const std::size_t n = _tls.write(plain);
        plain.remove_prefix(n);
        if (_tls.failed())
            return failure(_tls.error_code());
        if (plain.empty())
            break;
        if (n == 0 && !_tls.has_output())
            return tls::errc::protocol_error;  // cannot make progress
        // The pump's output is full: move it out and go on (replies are small, so rarely).
        _scratch.clear();
        _tls.take_output(_scratch);
        wire.append(_scratch);
    }
    _scratch.clear();
    _tls.take_output(_scratch);
    wire.append(_scratch);
    return {};
}

std::optional<smtp::tls_details> tls_transform::take_established() {
    if (_reported || !_tls.established())
        return std::nullopt;
    _reported = true;
    return smtp::tls_details{.protocol = std::string(_tls.version()),
                             .cipher = std::string(_tls.cipher())};
}

}  // namespace ringmail::sink
