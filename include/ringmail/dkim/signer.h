// DKIM signing (RFC 6376, RFC 8463): which tables sign a message, and the DKIM-Signature
// header fields themselves.
//
// A key_set (every [[dkim]] table with its loaded key) is immutable and shared by the shards;
// SIGHUP replaces it whole. Each shard builds its own `signer` from it (the wolfSSL contexts),
// and each message being received holds a message_signer with a shared_ptr to the signer it
// started with, so a reload never changes the key of a message in progress.
//
// The message_signer is fed the content in transmission form while it arrives: the body hash
// is computed on the way (no second pass), the header section is kept (bounded) for the header
// hash, computed with the signature at the end of data. Messages without a From header field,
// with several From fields or several addresses in it, or whose From domain no table covers,
// are not signed (finish() says why). Errors are values: a header section too large, a
// signature that fails.
#pragma once

#include "ringmail/core/result.h"
#include "ringmail/dkim/canon.h"
#include "ringmail/dkim/key.h"

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ringmail::dkim {

// One [[dkim]] table.
struct signature_spec {
    std::string domain;                // d=, lower case
    std::string selector;              // s=
    std::vector<std::string> headers;  // h= candidates, in order; never empty here
    bool over_sign = true;
    canon header_canon = canon::relaxed;
    canon body_canon = canon::relaxed;
    std::chrono::seconds expire_after{0};  // 0: no x=
    std::shared_ptr<const private_key> key;
};

// RFC 6376 section 5.4.1, plus List-Unsubscribe-Post (RFC 8058), Feedback-ID, and Message-ID
// and the MIME fields (a changed Content-Type could make the same body show differently).
const std::vector<std::string>& default_headers();

struct key_set {
    std::vector<signature_spec> specs;
};

// A header section cut into fields (each with its folding and its CRLF).
struct header_field {
    std::string_view name;  // before the colon, trailing whitespace removed
    std::string_view raw;
};
std::vector<header_field> split_header_fields(std::string_view header_section);

// The domain of the single address in the From field, lower case. nullopt with `why` when there
// is no From field, more than one, more than one address in it, or no domain.
std::optional<std::string> from_domain(const std::vector<header_field>& fields, std::string& why);

// The DKIM-Signature header field (with its CRLF) of one spec over a message whose header
// section is `fields` and whose body hash is `bh`, signed at `now`.
result<std::string> make_signature(const signature_spec& spec, key_signer& key,
                                   const std::vector<header_field>& fields, const digest& bh,
                                   std::int64_t now);

// One shard's signing state for one key_set.
class signer {
  public:
    static std::shared_ptr<signer> create(std::shared_ptr<const key_set> keys, std::string& why);
    const key_set& keys() const noexcept { return *_keys; }
    // The specs that sign for From domain `domain`: every table of the most specific domain
    // that is `domain` or a parent of it. Empty when none.
    std::vector<std::size_t> select(std::string_view domain) const;
    key_signer& key(std::size_t spec) { return *_signers[spec]; }

  private:
    std::shared_ptr<const key_set> _keys;
    std::vector<std::unique_ptr<key_signer>> _signers;  // parallel to _keys->specs
};

inline constexpr std::size_t max_header_bytes = 1 << 20;

class message_signer {
  public:
    explicit message_signer(std::shared_ptr<signer> s, std::size_t max_header = max_header_bytes);
    // Content in transmission form (dot-stuffed), any split, never the final ".\r\n".
    void update(std::string_view bytes);

    struct outcome {
        std::string headers;  // DKIM-Signature fields to prepend, each with its CRLF; may be empty
        std::string note;     // why nothing was signed (for the log), when headers is empty
    };
    // End of data: the signatures. Call once.
    result<outcome> finish(std::int64_t now);

  private:
    void header_done();
    void body(std::string_view b);

    std::shared_ptr<signer> _signer;
    unstuffer _unstuff;
    header_splitter _split;
    bool _decided = false;
    std::vector<std::size_t> _specs;  // who signs, once decided
    std::string _note;
    std::optional<body_hasher> _simple;
    std::optional<body_hasher> _relaxed;
};

}  // namespace ringmail::dkim
