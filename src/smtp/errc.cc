#include "ringmail/smtp/errc.h"

namespace ringmail::smtp {

namespace {
class category final : public std::error_category {
  public:
    const char* name() const noexcept override { return "ringmail.smtp"; }
    std::string message(int ev) const override {
        switch (static_cast<errc>(ev)) {
            case errc::path_syntax:
                return "path syntax error";
            case errc::null_path_not_allowed:
                return "null path not allowed here";
            case errc::local_part_syntax:
                return "local part syntax error";
            case errc::local_part_too_long:
                return "local part too long";
            case errc::domain_syntax:
                return "domain syntax error";
            case errc::domain_too_long:
                return "domain too long";
            case errc::address_literal_syntax:
                return "address literal syntax error";
            case errc::path_too_long:
                return "path too long";
            case errc::invalid_utf8:
                return "invalid UTF-8";
            case errc::utf8_needs_smtputf8:
                return "non-ASCII address without SMTPUTF8";
            case errc::parameter_syntax:
                return "parameter syntax error";
            case errc::unknown_parameter:
                return "unknown parameter";
            case errc::duplicate_parameter:
                return "duplicate parameter";
            case errc::size_syntax:
                return "SIZE syntax error";
            case errc::body_syntax:
                return "BODY syntax error";
            case errc::binarymime_unsupported:
                return "BODY=BINARYMIME not supported";
            case errc::smtputf8_syntax:
                return "SMTPUTF8 takes no value";
            case errc::ret_syntax:
                return "RET syntax error";
            case errc::envid_syntax:
                return "ENVID syntax error";
            case errc::notify_syntax:
                return "NOTIFY syntax error";
            case errc::orcpt_syntax:
                return "ORCPT syntax error";
            case errc::insufficient_storage:
                return "insufficient storage";
        }
        return "unknown ringmail.smtp error";
    }
    std::error_condition default_error_condition(int c) const noexcept override {
        if (static_cast<errc>(c) == errc::insufficient_storage)
            return std::errc::no_space_on_device;
        return std::error_condition(c, *this);
    }
};
}  // namespace

const std::error_category& smtp_category() noexcept {
    static const category c;
    return c;
}

}  // namespace ringmail::smtp
