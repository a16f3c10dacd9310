#!/usr/bin/env python3
# Writes a C++ source holding packaging/bounces.toml, so that ringmaild classifies bounces with
# the shipped rules even where the file is not installed (a build tree, tests).
import sys

src, out = sys.argv[1], sys.argv[2]
text = open(src, encoding='utf-8').read()
delim = 'ringmail_rules'
if ')' + delim + '"' in text:
    sys.exit('embed_rules: the raw-string delimiter occurs in ' + src)
with open(out, 'w', encoding='utf-8') as f:
    f.write('// Generated from packaging/bounces.toml by src/queue/embed_rules.py.\n')
    f.write('#include "ringmail/queue/bounce_class.h"\n\n')
    f.write('namespace ringmail::queue {\n\n')
    f.write('std::string_view shipped_bounce_rules() noexcept {\n')
    f.write('    static constexpr char text[] = R"' + delim + '(' + text + ')' + delim + '";\n')
    f.write('    return {text, sizeof text - 1};\n')
    f.write('}\n\n}  // namespace ringmail::queue\n')
