#include "mask/scanner.h"

#include <hs/hs.h>
#include <re2/re2.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <set>
#include <unordered_set>

namespace cordon::mask {

namespace detail {

void HsScratchFree::operator()(hs_scratch *s) const
{
	hs_free_scratch(s);
}

struct HsDatabaseFree {
	void operator()(hs_database_t *d) const { hs_free_database(d); }
};
using HsDatabasePtr = std::unique_ptr<hs_database_t, HsDatabaseFree>;

} // namespace detail

// Matches confirmed in one cluster of hits before the rest of the cluster is masked unexamined.
constexpr size_t kMaxMatchesPerCluster = 65536;
// Longest match a non-block rule may have: what a stream masker holds back grows with it.
constexpr size_t kMaxRuleWidth = 64 * 1024;
constexpr size_t kMaxBlockCap = 1024 * 1024;

struct RuleSet::Compiled {
	struct Rule {
		std::unique_ptr<re2::RE2> re;    // the rule's regex (for a block rule: its opening marker)
		std::unique_ptr<re2::RE2> block; // block rules: the whole block, anchored at the marker
		std::unique_ptr<re2::RE2> end;   // block rules: the closing line
		int groups = 1;                  // submatches to ask RE2 for (0..secret_group)
		size_t width = 0;                // vectorscan's max_width of `re`
		size_t cap = 0;
		std::vector<std::string> keywords; // lower case
		std::vector<std::unique_ptr<re2::RE2>> allow;
		Direction direction = Direction::Both;
		int secret_group = 0;
		double min_entropy = 0;
	};
	std::vector<Rule> rules;
	std::vector<std::unique_ptr<re2::RE2>> global_allow;
	detail::HsDatabasePtr block_db;  // Scanner::scan
	detail::HsDatabasePtr stream_db; // StreamMasker
	detail::HsScratchPtr prototype;  // cloned by each Scanner
};

namespace {

re2::RE2::Options re2_options()
{
	re2::RE2::Options o;
	// Bytes, like vectorscan without HS_FLAG_UTF8: widths and classes then agree between the two.
	o.set_encoding(re2::RE2::Options::EncodingLatin1);
	o.set_log_errors(false);
	o.set_max_mem(64 << 20); // the PEM body programs run over up to block_cap bytes with submatches
	return o;
}

Error rule_error(const std::string &id, const std::string &what)
{
	return plain_error("mask rule '" + id + "': " + what);
}

// RE2 caps a counted repetition at 1000, while vectorscan handles a long one best as a single
// repeat. So RE2 gets a copy of the regex where `atom{n,m}` with n or m over 1000 (atom: a
// character, an escape or a class) is split into consecutive pieces of at most 1000, which match
// exactly the same strings with the same (greedy) preference.
std::string split_long_repeats(std::string_view p)
{
	constexpr size_t kLimit = 1000;
	constexpr size_t npos = std::string::npos;
	std::string out;
	size_t atom = npos; // where the last single-character atom starts in `out`
	for (size_t i = 0; i < p.size();) {
		const char c = p[i];
		if (c == '\\') {
			size_t len = 2;
			if (i + 2 < p.size() && p[i + 1] == 'x')
				len = p[i + 2] == '{' ? p.find('}', i) + 1 - i : 4;
			len = std::min(len, p.size() - i);
			atom = out.size();
			out.append(p.substr(i, len));
			i += len;
			continue;
		}
		if (c == '[') {
			size_t j = i + 1;
			if (j < p.size() && p[j] == '^')
				j++;
			if (j < p.size() && p[j] == ']')
				j++;
			while (j < p.size() && p[j] != ']') {
				if (p[j] == '\\')
					j++;
				else if (p[j] == '[' && j + 1 < p.size() && p[j + 1] == ':')
					j = std::min(p.find(":]", j + 2), p.size() - 1) + 1;
				j++;
			}
			j = std::min(j + 1, p.size());
			atom = out.size();
			out.append(p.substr(i, j - i));
			i = j;
			continue;
		}
		if (c == '{' && atom != npos) {
			size_t j = i + 1, n = 0, m = 0;
			bool ok = j < p.size() && std::isdigit(static_cast<unsigned char>(p[j]));
			while (j < p.size() && std::isdigit(static_cast<unsigned char>(p[j])))
				n = std::min<size_t>(n * 10 + (p[j++] - '0'), 1 << 20);
			m = n;
			if (ok && j < p.size() && p[j] == ',') {
				j++;
				ok = j < p.size() && std::isdigit(static_cast<unsigned char>(p[j]));
				m = 0;
				while (j < p.size() && std::isdigit(static_cast<unsigned char>(p[j])))
					m = std::min<size_t>(m * 10 + (p[j++] - '0'), 1 << 20);
			}
			ok = ok && j < p.size() && p[j] == '}' && m >= n && (n > kLimit || m > kLimit);
			const bool modified = j + 1 < p.size() && (p[j + 1] == '?' || p[j + 1] == '+');
			if (ok && !modified) {
				const std::string a = out.substr(atom);
				out.resize(atom);
				for (; n > kLimit; n -= kLimit, m -= kLimit)
					out += a + "{" + std::to_string(kLimit) + "}";
				size_t first = std::min(m, kLimit);
				out += a + "{" + std::to_string(n) + "," + std::to_string(first) + "}";
				for (m -= first; m > 0; m -= first) {
					first = std::min(m, kLimit);
					out += a + "{0," + std::to_string(first) + "}";
				}
				atom = npos;
				i = j + 1;
				continue;
			}
		}
		const bool special = c == '(' || c == ')' || c == '|' || c == '*' || c == '+' || c == '?' || c == '{' ||
		                     c == '}' || c == '^' || c == '$';
		atom = special ? npos : out.size();
		out.push_back(c);
		i++;
	}
	return out;
}

Result<std::unique_ptr<re2::RE2>> compile_re2(const std::string &pattern, const std::string &id, const char *what)
{
	auto re = std::make_unique<re2::RE2>(split_long_repeats(pattern), re2_options());
	if (!re->ok())
		return rule_error(id, std::string(what) + " does not compile: " + re->error());
	return re;
}

bool valid_id(const std::string &id)
{
	if (id.empty() || id.size() > 64)
		return false;
	for (char c : id)
		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.'))
			return false;
	return true;
}

bool contains_nocase(std::string_view hay, const std::string &needle_lower)
{
	auto it = std::search(hay.begin(), hay.end(), needle_lower.begin(), needle_lower.end(), [](char a, char b) {
		return (a >= 'A' && a <= 'Z' ? static_cast<char>(a - 'A' + 'a') : a) == b;
	});
	return it != hay.end();
}

Result<detail::HsDatabasePtr> compile_db(const std::vector<RuleSpec> &specs, unsigned int mode)
{
	std::vector<const char *> expressions;
	std::vector<unsigned int> flags, ids;
	for (size_t i = 0; i < specs.size(); i++) {
		expressions.push_back(specs[i].regex.c_str());
		flags.push_back(0);
		ids.push_back(static_cast<unsigned int>(i));
	}
	hs_database_t *db = nullptr;
	hs_compile_error_t *err = nullptr;
	if (hs_compile_multi(expressions.data(), flags.data(), ids.data(), static_cast<unsigned int>(specs.size()),
	                     mode, nullptr, &db, &err) != HS_SUCCESS) {
		std::string message = err ? err->message : "unknown error";
		const int which = err ? err->expression : -1;
		hs_free_compile_error(err);
		if (which >= 0 && static_cast<size_t>(which) < specs.size())
			return rule_error(specs[which].id, "regex not supported by vectorscan: " + message);
		return plain_error("mask rules: vectorscan compile failed: " + message);
	}
	return detail::HsDatabasePtr(db);
}

} // namespace

size_t RuleSet::stream_state_size() const
{
	size_t size = 0;
	if (compiled_->stream_db && hs_stream_size(compiled_->stream_db.get(), &size) != HS_SUCCESS)
		return 0;
	return size;
}

RuleSet::~RuleSet() = default;

std::shared_ptr<const RuleSet> RuleSet::with_replacement(std::string replacement) const
{
	auto copy = std::shared_ptr<RuleSet>(new RuleSet());
	copy->rules_ = rules_;
	copy->options_ = options_;
	copy->options_.replacement = std::move(replacement);
	copy->max_width_ = max_width_;
	copy->max_block_ = max_block_;
	copy->compiled_ = compiled_;
	return copy;
}

Result<std::shared_ptr<const RuleSet>> RuleSet::compile(std::vector<RuleSpec> rules, Options options)
{
	auto compiled = std::make_unique<Compiled>();
	size_t max_width = 0, max_block = 0;
	std::unordered_set<std::string> ids;
	for (const RuleSpec &spec : rules) {
		if (!valid_id(spec.id))
			return plain_error("mask rule '" + spec.id +
			                   "': the id must be 1-64 characters of a-z, 0-9, '-', '_', '.'");
		if (!ids.insert(spec.id).second)
			return rule_error(spec.id, "defined twice");
		if (spec.regex.empty())
			return rule_error(spec.id, "regex is empty");
		if (spec.min_entropy < 0 || spec.min_entropy > 8)
			return rule_error(spec.id, "min_entropy must be between 0 and 8 bits per byte");
		if (spec.block_regex.empty() != (spec.block_cap == 0))
			return rule_error(spec.id, "block_regex and block_cap go together");
		if (spec.block_cap > kMaxBlockCap)
			return rule_error(spec.id, "block_cap is over " + std::to_string(kMaxBlockCap));

		Compiled::Rule r;
		auto re = compile_re2(spec.regex, spec.id, "regex");
		if (!re)
			return re.error();
		r.re = std::move(*re);

		// vectorscan's view of the same regex: is it in the supported subset, and how long can a match be?
		hs_expr_info_t *info = nullptr;
		hs_compile_error_t *err = nullptr;
		if (hs_expression_info(spec.regex.c_str(), 0, &info, &err) != HS_SUCCESS) {
			std::string message = err ? err->message : "unknown error";
			hs_free_compile_error(err);
			return rule_error(spec.id, "regex not supported by vectorscan: " + message);
		}
		const unsigned int min_width = info->min_width, width = info->max_width;
		std::free(info);
		if (min_width == 0)
			return rule_error(spec.id, "regex matches the empty string");
		if (width == UINT_MAX)
			return rule_error(spec.id, "regex is unbounded (use bounded repeats such as {1,256}): the "
			                           "longest match bounds what a stream holds back");
		if (width > kMaxRuleWidth)
			return rule_error(spec.id, "regex can match " + std::to_string(width) +
			                               " bytes; the limit is " + std::to_string(kMaxRuleWidth));
		r.width = width;
		max_width = std::max<size_t>(max_width, width);

		const int groups = r.re->NumberOfCapturingGroups();
		if (spec.secret_group < 0 || spec.secret_group > groups)
			return rule_error(spec.id, "secret_group " + std::to_string(spec.secret_group) +
			                               " but the regex has " + std::to_string(groups) +
			                               " capture groups");
		r.secret_group = spec.secret_group;
		r.groups = spec.secret_group + 1;
		if (!spec.block_regex.empty()) {
			auto block = compile_re2(spec.block_regex, spec.id, "block_regex");
			if (!block)
				return block.error();
			r.block = std::move(*block);
			if (!spec.block_end.empty()) {
				auto end = compile_re2(spec.block_end, spec.id, "block_end");
				if (!end)
					return end.error();
				r.end = std::move(*end);
			}
			r.cap = spec.block_cap;
			max_block = std::max(max_block, spec.block_cap);
		} else if (!spec.block_end.empty()) {
			return rule_error(spec.id, "block_end without block_regex");
		}
		for (const std::string &k : spec.keywords) {
			std::string lower;
			for (char c : k)
				lower.push_back(c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c);
			if (!lower.empty())
				r.keywords.push_back(std::move(lower));
		}
		for (size_t i = 0; i < spec.allowlist.size(); i++) {
			auto a =
			    compile_re2(spec.allowlist[i], spec.id, ("allowlist[" + std::to_string(i) + "]").c_str());
			if (!a)
				return a.error();
			r.allow.push_back(std::move(*a));
		}
		r.direction = spec.direction;
		r.min_entropy = spec.min_entropy;
		compiled->rules.push_back(std::move(r));
	}
	for (size_t i = 0; i < options.global_allowlist.size(); i++) {
		auto a = std::make_unique<re2::RE2>(options.global_allowlist[i], re2_options());
		if (!a->ok())
			return plain_error("mask global allowlist[" + std::to_string(i) +
			                   "] does not compile: " + a->error());
		compiled->global_allow.push_back(std::move(a));
	}

	if (!rules.empty()) {
		auto block_db = compile_db(rules, HS_MODE_BLOCK);
		if (!block_db)
			return block_db.error();
		auto stream_db = compile_db(rules, HS_MODE_STREAM);
		if (!stream_db)
			return stream_db.error();
		compiled->block_db = std::move(*block_db);
		compiled->stream_db = std::move(*stream_db);
		hs_scratch_t *scratch = nullptr;
		if (hs_alloc_scratch(compiled->block_db.get(), &scratch) != HS_SUCCESS ||
		    hs_alloc_scratch(compiled->stream_db.get(), &scratch) != HS_SUCCESS) {
			hs_free_scratch(scratch);
			return system_error("mask rules: allocating vectorscan scratch", ENOMEM);
		}
		compiled->prototype.reset(scratch);
	}

	std::shared_ptr<RuleSet> set(new RuleSet());
	set->rules_ = std::move(rules);
	set->options_ = std::move(options);
	set->max_width_ = max_width;
	set->max_block_ = max_block;
	set->compiled_ = std::move(compiled);
	return std::shared_ptr<const RuleSet>(std::move(set));
}

namespace detail {

std::string re2_pattern(std::string_view regex)
{
	return split_long_repeats(regex);
}

size_t rule_width(const RuleSet &rules, uint32_t index)
{
	return rules.compiled().rules[index].width;
}

bool is_block_rule(const RuleSet &rules, uint32_t index)
{
	return rules.compiled().rules[index].block != nullptr;
}

Direction rule_direction(const RuleSet &rules, uint32_t index)
{
	return rules.compiled().rules[index].direction;
}

const hs_database *stream_database(const RuleSet &rules)
{
	return rules.compiled().stream_db.get();
}

const hs_database *block_database(const RuleSet &rules)
{
	return rules.compiled().block_db.get();
}

void add_hit(std::vector<Cluster> &clusters, uint64_t end, size_t width)
{
	// vectorscan reports in end order, so a hit nearly always extends the last cluster. Two hits
	// share a cluster when their confirmation windows ([end - width, end]) overlap.
	if (!clusters.empty()) {
		Cluster &c = clusters.back();
		if (end + width >= c.lo && end <= c.hi + width) {
			c.lo = std::min(c.lo, end);
			c.hi = std::max(c.hi, end);
			return;
		}
	}
	clusters.push_back({end, end});
}

void normalize(std::vector<Cluster> &clusters, size_t width)
{
	if (clusters.size() < 2)
		return;
	std::sort(clusters.begin(), clusters.end(), [](const Cluster &a, const Cluster &b) { return a.lo < b.lo; });
	size_t n = 0;
	for (size_t i = 1; i < clusters.size(); i++) {
		if (clusters[i].lo <= clusters[n].hi + width)
			clusters[n].hi = std::max(clusters[n].hi, clusters[i].hi);
		else
			clusters[++n] = clusters[i];
	}
	clusters.resize(n + 1);
}

namespace {

bool is_body_char(unsigned char c)
{
	const bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
	return alnum || c == '+' || c == '/' || c == '=' || c == '\\' || c == '"' || c == '\'' || c == ' ' ||
	       c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

// The gates a confirmed match passes to be a finding. `match` is the rule's whole match.
bool passes(const RuleSet::Compiled &compiled, const RuleSet::Compiled::Rule &rule, std::string_view match,
            std::string_view secret)
{
	if (secret.empty())
		return false;
	if (!rule.keywords.empty()) {
		bool found = false;
		for (const std::string &k : rule.keywords)
			if ((found = contains_nocase(match, k)))
				break;
		if (!found)
			return false;
	}
	if (rule.min_entropy > 0 && shannon_entropy(secret) < rule.min_entropy)
		return false;
	const re2::StringPiece s(secret.data(), secret.size());
	for (const auto &a : rule.allow)
		if (re2::RE2::PartialMatch(s, *a))
			return false;
	for (const auto &a : compiled.global_allow)
		if (re2::RE2::PartialMatch(s, *a))
			return false;
	return true;
}

// Whether a block [.., be) ends with its closing line (searched after the marker, ending at be).
bool closes(const RuleSet::Compiled::Rule &rule, const re2::StringPiece &text, size_t marker_end, size_t be)
{
	if (!rule.end)
		return true;
	size_t pos = std::max(marker_end, be > 256 ? be - 256 : 0);
	re2::StringPiece m;
	while (pos < be && rule.end->Match(text, pos, be, re2::RE2::UNANCHORED, &m, 1)) {
		const size_t ms = static_cast<size_t>(m.data() - text.data());
		if (ms + m.size() == be)
			return true;
		pos = ms + 1;
	}
	return false;
}

} // namespace

size_t continuation_end(std::string_view buf, size_t from)
{
	while (from < buf.size() && is_body_char(static_cast<unsigned char>(buf[from])))
		from++;
	return from;
}

void confirm(const RuleSet &rules, uint32_t index, const Cluster &cluster, const Window &window,
             std::vector<Candidate> &out, uint64_t &hold_from, uint64_t skip_blocks_below)
{
	const RuleSet::Compiled &compiled = rules.compiled();
	const RuleSet::Compiled::Rule &rule = compiled.rules[index];
	const uint64_t buf_end = window.base + window.buf.size();
	// Reach back the rule's width from the first hit; never start at buf[0] unless it is the start of
	// the data, so that RE2 sees the byte before (\b, ^) the way vectorscan did.
	uint64_t lo = cluster.lo > rule.width ? cluster.lo - rule.width : 0;
	lo = std::max(lo, window.base + (window.base > 0 ? 1 : 0));
	const uint64_t hi = std::min(cluster.hi, buf_end);
	if (lo >= hi)
		return;
	const re2::StringPiece text(window.buf.data(), window.buf.size());
	size_t pos = lo - window.base;
	const size_t endpos = hi - window.base;
	re2::StringPiece groups[16];
	std::vector<re2::StringPiece> many;
	re2::StringPiece *g = groups;
	if (rule.groups > 16) {
		many.resize(rule.groups);
		g = many.data();
	}

	// Every position where a match starts, not only non-overlapping ones: the set found then does not
	// depend on where the window starts (the stream masker's windows start wherever hits left off).
	size_t matches = 0;
	while (pos < endpos && rule.re->Match(text, pos, endpos, re2::RE2::UNANCHORED, g, rule.groups)) {
		const size_t ms = static_cast<size_t>(g[0].data() - text.data());
		const size_t me = ms + g[0].size();
		const uint64_t abs_ms = window.base + ms;
		if (abs_ms >= window.accept_below)
			break; // matches come in start order: the rest are left for later
		if (++matches > kMaxMatchesPerCluster) {
			// Input built to make a rule match at every byte (a user rule like [a-z0-9]{40} over megabytes
			// of base64): bounded work, and the whole stretch is masked rather than inspected further.
			out.push_back({index, abs_ms, abs_ms, window.base + endpos, false});
			return;
		}
		pos = ms + 1;
		if (!rule.block) {
			const re2::StringPiece &secret = g[rule.secret_group];
			if (secret.data() == nullptr)
				continue;
			if (!passes(compiled, rule, std::string_view(g[0].data(), g[0].size()),
			            std::string_view(secret.data(), secret.size())))
				continue;
			const uint64_t start = window.base + static_cast<uint64_t>(secret.data() - text.data());
			out.push_back({index, abs_ms, start, start + secret.size(), false});
			continue;
		}

		if (abs_ms < skip_blocks_below)
			continue; // this block was already found (a stream's later rounds see it again)
		const size_t cap_end = std::min(window.buf.size(), ms + rule.cap);
		const bool cut_by_data = cap_end < ms + rule.cap; // more data could still bring the END line
		// Only the extent: without submatches RE2 runs its DFA, not the NFA over kilobytes of key.
		re2::StringPiece block;
		if (!rule.block->Match(text, ms, cap_end, re2::RE2::ANCHOR_START, &block, 1))
			continue;
		const size_t be = ms + block.size();
		const bool closed = closes(rule, text, me, be);
		if (!closed && cut_by_data && !window.final) {
			hold_from = std::min(hold_from, abs_ms); // wait for the END line, up to the cap
			continue;
		}
		const bool at_cap = be >= ms + rule.cap;
		const bool at_data_end = window.final && be == window.buf.size();
		if (!closed && !at_cap && !at_data_end && be - me < kMinOpenBlockBody)
			continue; // a mention of the marker, not a key
		const re2::StringPiece &marker = g[rule.secret_group];
		if (marker.data() == nullptr)
			continue;
		const size_t ss = static_cast<size_t>(marker.data() - text.data());
		if (!passes(compiled, rule, std::string_view(block.data(), block.size()),
		            std::string_view(text.data() + ss, be - ss)))
			continue;
		const uint64_t start = window.base + ss;
		uint64_t end = window.base + be;
		bool open = !closed && (at_cap || at_data_end);
		if (open && at_cap) {
			// Cut by the cap: the base64 that follows is still the key.
			end = window.base + continuation_end(window.buf, be);
			open = end == buf_end;
		}
		out.push_back({index, abs_ms, start, end, open});
	}
}

void merge(std::vector<Candidate> &c)
{
	std::sort(c.begin(), c.end(), [](const Candidate &a, const Candidate &b) {
		return a.start != b.start ? a.start < b.start : a.rule < b.rule;
	});
	size_t n = 0;
	for (size_t i = 0; i < c.size(); i++) {
		if (n > 0 && c[i].start <= c[n - 1].end) {
			if (c[i].end > c[n - 1].end) {
				c[n - 1].end = c[i].end;
				c[n - 1].open = c[i].open;
			} else if (c[i].end == c[n - 1].end) {
				c[n - 1].open = c[n - 1].open || c[i].open;
			}
			continue;
		}
		c[n++] = c[i];
	}
	c.resize(n);
}

} // namespace detail

Scanner::Scanner(std::shared_ptr<const RuleSet> rules) : rules_(std::move(rules))
{
	hits_.resize(rules_->rules().size());
	const hs_scratch_t *prototype = rules_->compiled().prototype.get();
	if (!prototype) // no rules: nothing to scan with, nothing to find
		return;
	hs_scratch_t *scratch = nullptr;
	if (hs_clone_scratch(prototype, &scratch) != HS_SUCCESS) {
		error_ = system_error("allocating vectorscan scratch", ENOMEM);
		failed_ = true;
		return;
	}
	scratch_.reset(scratch);
}

Scanner::~Scanner() = default;

int Scanner::on_hit(unsigned int id, unsigned long long, unsigned long long to, unsigned int, void *context)
{
	auto *self = static_cast<Scanner *>(context);
	const auto &rule = self->rules_->compiled().rules[id];
	if (!applies(rule.direction, self->direction_))
		return 0;
	auto &clusters = self->hits_[id];
	if (clusters.empty())
		self->touched_.push_back(id);
	detail::add_hit(clusters, to, rule.width);
	return 0;
}

void Scanner::reset_hits()
{
	for (uint32_t r : touched_)
		hits_[r].clear();
	touched_.clear();
}

std::vector<Finding> Scanner::scan(std::string_view text, Direction direction)
{
	std::vector<Finding> findings;
	if (text.empty() || rules_->rules().empty())
		return findings;
	if (failed_)
		return {Finding{"scanner-unavailable", 0, text.size()}};

	const auto &compiled = rules_->compiled();
	reset_hits();
	direction_ = direction;
	hs_error_t rc;
	if (text.size() <= UINT_MAX) {
		rc = hs_scan(compiled.block_db.get(), text.data(), static_cast<unsigned int>(text.size()), 0,
		             scratch_.get(), &Scanner::on_hit, this);
	} else { // over 4 GiB: the block API takes 32-bit lengths
		hs_stream_t *stream = nullptr;
		rc = hs_open_stream(compiled.stream_db.get(), 0, &stream);
		for (size_t off = 0; rc == HS_SUCCESS && off < text.size(); off += 1u << 30) {
			const size_t n = std::min<size_t>(1u << 30, text.size() - off);
			rc = hs_scan_stream(stream, text.data() + off, static_cast<unsigned int>(n), 0, scratch_.get(),
			                    &Scanner::on_hit, this);
		}
		if (stream) {
			const hs_error_t close_rc = hs_close_stream(stream, scratch_.get(), &Scanner::on_hit, this);
			if (rc == HS_SUCCESS)
				rc = close_rc;
		}
	}
	if (rc != HS_SUCCESS) { // fail closed: what could not be scanned is masked whole
		reset_hits();
		return {Finding{"scanner-error", 0, text.size()}};
	}

	std::vector<detail::Candidate> candidates;
	const detail::Window window{text, 0, true, UINT64_MAX};
	uint64_t hold = UINT64_MAX;
	for (uint32_t r : touched_) {
		detail::normalize(hits_[r], compiled.rules[r].width);
		for (const detail::Cluster &c : hits_[r])
			detail::confirm(*rules_, r, c, window, candidates, hold);
	}
	reset_hits();
	detail::merge(candidates);
	findings.reserve(candidates.size());
	for (const auto &c : candidates)
		findings.push_back({rules_->rules()[c.rule].id, c.start, c.end - c.start});
	return findings;
}

std::string Scanner::apply(std::string_view text, const std::vector<Finding> &findings, const Options &options)
{
	std::string out;
	out.reserve(text.size());
	size_t at = 0;
	for (const Finding &f : findings) {
		if (f.offset < at || f.offset > text.size())
			continue;
		out.append(text.substr(at, f.offset - at));
		const size_t len = std::min(f.length, text.size() - f.offset);
		out += replacement(options, f.rule, len);
		at = f.offset + len;
	}
	out.append(text.substr(at));
	return out;
}

std::string Scanner::mask(std::string_view text, Direction direction, std::vector<Finding> *found)
{
	std::vector<Finding> findings = scan(text, direction);
	std::string out = apply(text, findings, rules_->options());
	if (found)
		found->insert(found->end(), findings.begin(), findings.end());
	return out;
}

} // namespace cordon::mask
