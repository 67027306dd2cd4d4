// Secret scanning throughput (issue #4: goal >= 3 GB/s per core): every built-in rule over a 64 MiB
// corpus of realistic source files (code, JSON, YAML) with a few secrets, in the same run:
//   - vectorscan, the engine cordond uses (Scanner::scan: vectorscan + RE2 confirmation of hits);
//   - StreamMasker over the same bytes in 16 KiB writes (what a streamed body costs);
//   - RE2::Set over 64 KiB blocks, then each matching rule's RE2 over the block for positions;
//   - PCRE2 with JIT, each rule in turn over the whole corpus.
// Each reports bytes_per_second and the matches it found (`found`), so the jobs can be compared.
// Run: build/cordon-microbench --benchmark_filter=Mask
#include <benchmark/benchmark.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <hs/hs.h>
#include <pcre2.h>
#include <re2/re2.h>
#include <re2/set.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "mask/scanner.h"
#include "mask/stream_masker.h"

using namespace cordon::mask;

namespace {

constexpr size_t kCorpusSize = 64 << 20;

class Gen {
public:
	explicit Gen(uint64_t seed) : rng_(seed) {}
	size_t n(size_t k) { return rng_() % k; }
	std::string of(std::string_view charset, size_t len)
	{
		std::string s;
		for (size_t i = 0; i < len; i++)
			s.push_back(charset[n(charset.size())]);
		return s;
	}
	// Identifiers from a vocabulary in which secret-ish words (key, token, secret, password) are as rare
	// as in real code: about 0.1-0.5 occurrences per KiB (CPython's library: token 0.15, key 0.45,
	// passw 0.03 per KiB), since each one costs the keyword rules a closer look.
	std::string ident()
	{
		static const char *parts[] = {
		    "user",   "item",    "config",  "request", "handler", "value",  "index",  "cache",  "buffer",
		    "result", "error",   "client",  "server",  "count",   "name",   "path",   "file",   "session",
		    "data",   "node",    "list",    "map",     "entry",   "state",  "event",  "stream", "reader",
		    "writer", "parser",  "options", "context", "target",  "source", "offset", "length", "size",
		    "limit",  "timeout", "retry",   "status",  "message", "header", "body",   "frame",  "packet",
		    "socket", "peer",    "host",    "port",    "address", "table",  "row",    "column", "schema",
		    "query",  "filter",  "sort",    "page",    "view",    "model",  "widget", "layout", "style",
		    "theme",  "color",   "image",   "font",    "text",    "label",  "button", "task",   "job",
		    "worker", "queue",   "lock",    "thread",  "timer",   "clock",  "key",    "token"};
		constexpr size_t n_parts = sizeof(parts) / sizeof(parts[0]);
		// "key" and "token" are the last two: drawn 1 time in 4 as often as the other words.
		auto draw = [&] {
			const size_t i = n(n_parts * 4 - 6);
			return parts[i < (n_parts - 2) * 4 ? i / 4 : n_parts - 2 + (i - (n_parts - 2) * 4)];
		};
		std::string s = draw();
		if (n(2))
			s += std::string(n(2) ? "_" : "") + draw();
		return s;
	}
	std::string number() { return std::to_string(n(100000)); }

private:
	std::mt19937_64 rng_;
};

// One line of C++, Python, Go, TypeScript, JSON or YAML, with identifiers and numbers varied.
std::string line(Gen &g)
{
	const std::string a = g.ident(), b = g.ident(), c = g.ident(), num = g.number();
	const size_t pick = g.n(400);
	if (pick == 0)
		return "  password_policy: {min_length: 12, require_digit: true}  # " + a + "\n";
	if (pick < 4)
		return "    token_count = len(" + a + ".split())  # " + b + "\n";
	switch (g.n(22)) {
	case 0:
		return "    for (size_t i = 0; i < " + a + ".size(); ++i) {\n";
	case 1:
		return "        if (!" + a + "[i].valid())\n            continue;\n";
	case 2:
		return "def " + a + "(self, " + b + ", *args, **kwargs):\n";
	case 3:
		return "    " + a + " = request.args.get('" + b + "')\n";
	case 4:
		return "const " + a + " = await fetch(`${baseUrl}/v1/" + b + "?page=${page}`, { headers });\n";
	case 5:
		return "func (s *Server) " + a + "(w http.ResponseWriter, r *http.Request) error {\n";
	case 6:
		return "\treturn fmt.Errorf(\"decode %s: %w\", " + a + ", err)\n";
	case 7:
		return "import { " + a + ", " + b + " } from './" + c + "';\n";
	case 8:
		return "// TODO(" + a + "): rotate the " + b + " when it expires after " + num + " seconds\n";
	case 9:
		return "  {\"id\": " + num + ", \"name\": \"" + a + "-" + num + "\", \"tags\": [\"" + b + "\", \"" + c +
		       "\"], \"created_at\": \"2024-03-01T12:00:00Z\"},\n";
	case 10:
		return "    \"" + a + "\": {\"enabled\": true, \"limit\": " + num + ", \"mode\": \"" + b + "\"},\n";
	case 11:
		return "  " + a + ":\n    replicas: 3\n    image: registry.example.com/" + b + ":1." + num + "\n";
	case 12:
		return "        - name: " + a + "\n          valueFrom:\n            secretKeyRef: {name: " + b +
		       ", key: password}\n";
	case 13:
		return "    std::unique_ptr<" + a + "> " + b + " = std::make_unique<" + a + ">(" + c + ");\n";
	case 14:
		return "    if err := " + a + "." + b + "(ctx); err != nil {\n        return nil, err\n    }\n";
	case 15:
		return "    logger.info(\"" + a + " finished in %d ms\", " + num + ")\n";
	case 16:
		return "export function " + a + "(" + b + ": string, " + c + "?: number): Promise<void> {\n";
	case 17:
		return "    assert " + a + "." + b + " == " + num + ", f\"unexpected {" + c + "}\"\n";
	case 18:
		return "SELECT " + a + ", " + b + " FROM " + c + " WHERE id = " + num + " ORDER BY created_at DESC;\n";
	case 19:
		return "}\n\n";
	case 20:
		return "    private static final String " + a + " = \"" + b + "." + c + "\";\n";
	default:
		return "    let " + a + " = " + b + ".map(|x| x * " + num + ").collect::<Vec<_>>();\n";
	}
}

std::string secret(Gen &g)
{
	const char *alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
	switch (g.n(6)) {
	case 0:
		return "GITHUB_TOKEN=gh"
		       "p_" +
		       g.of(alnum, 36) + "\n";
	case 1:
		return "aws_access_key_id = AK"
		       "IA" +
		       g.of("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16) + "\naws_secret_access_key = " + g.of(alnum, 40) +
		       "\n";
	case 2: {
		std::string s = "-----BEGIN RSA PRIVATE KEY-----\n";
		for (int i = 0; i < 25; i++)
			s += g.of(alnum, 64) + "\n";
		return s + "-----END RSA PRIVATE KEY-----\n";
	}
	case 3:
		return "DATABASE_URL=postgres://app:" + g.of(alnum, 20) + "@db.internal:5432/app\n";
	case 4:
		return "    password = \"" + g.of(alnum, 18) + "#!\"\n";
	default:
		return "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJ" + g.of(alnum, 120) + "." + g.of(alnum, 43) +
		       "\n";
	}
}

// Generated: code, JSON and YAML lines, a secret every MiB.
const std::string &generated_corpus()
{
	static const std::string text = [] {
		Gen g(42);
		std::string s;
		s.reserve(kCorpusSize + 4096);
		size_t next_secret = 1 << 20;
		while (s.size() < kCorpusSize) {
			s += line(g);
			if (s.size() >= next_secret) {
				s += secret(g);
				next_secret += 1 << 20;
			}
		}
		s.resize(kCorpusSize);
		return s;
	}();
	return text;
}

// Real files from this host (C and C++ headers, Python, JavaScript, JSON, YAML), in path order,
// with the same kind of secrets every MiB; topped up with generated lines if the host has too few.
const std::string &host_corpus()
{
	static const std::string text = [] {
		namespace fs = std::filesystem;
		struct Kind {
			std::vector<std::string> roots, extensions;
			size_t budget;
		};
		std::vector<Kind> kinds = {
		    {{"/usr/include"}, {".h", ".hpp", ".hh"}, 24 << 20},
		    {{"/usr/lib/python3", "/usr/lib/python3.11", "/usr/lib/python3.12"}, {".py"}, 20 << 20},
		    {{"/usr/share/nodejs", "/usr/lib/node_modules", "/usr/share/javascript"}, {".js", ".ts"}, 12 << 20},
		    {{"/usr/share", "/usr/lib", "/etc"}, {".json", ".yaml", ".yml"}, 8 << 20},
		};
		Gen g(43);
		std::string s;
		s.reserve(kCorpusSize + (2 << 20));
		size_t next_secret = 1 << 20;
		auto append = [&](std::string_view data) {
			while (!data.empty()) {
				const size_t room = next_secret > s.size() ? next_secret - s.size() : 0;
				const size_t nl = data.find('\n', room);
				const size_t take = nl == std::string_view::npos ? data.size() : nl + 1;
				s.append(data.substr(0, take));
				data.remove_prefix(take);
				if (s.size() >= next_secret) {
					s += secret(g);
					next_secret += 1 << 20;
				}
			}
		};
		for (const Kind &kind : kinds) {
			std::vector<std::string> files;
			for (const std::string &root : kind.roots) {
				std::error_code ec;
				for (fs::recursive_directory_iterator
				         it(root, fs::directory_options::skip_permission_denied, ec),
				     end;
				     !ec && it != end; it.increment(ec)) {
					if (!it->is_regular_file(ec) || it->file_size(ec) > (1 << 20))
						continue;
					const std::string ext = it->path().extension().string();
					if (std::find(kind.extensions.begin(), kind.extensions.end(), ext) !=
					    kind.extensions.end())
						files.push_back(it->path().string());
				}
			}
			std::sort(files.begin(), files.end());
			files.erase(std::unique(files.begin(), files.end()), files.end());
			const size_t stop = std::min(kCorpusSize, s.size() + kind.budget);
			for (const std::string &f : files) {
				if (s.size() >= stop)
					break;
				std::ifstream in(f, std::ios::binary);
				std::ostringstream data;
				data << in.rdbuf();
				append(data.str());
			}
		}
		while (s.size() < kCorpusSize)
			append(line(g));
		s.resize(kCorpusSize);
		return s;
	}();
	return text;
}

const std::string &corpus(int which)
{
	return which == 0 ? generated_corpus() : host_corpus();
}

const std::shared_ptr<const RuleSet> &rules()
{
	static const std::shared_ptr<const RuleSet> r = [] {
		auto compiled = RuleSet::compile(RuleSet::builtin(), {});
		if (!compiled)
			std::abort();
		return *compiled;
	}();
	return r;
}

// Arg: 0 generated corpus, 1 host files.
void BM_MaskVectorscan(benchmark::State &state)
{
	const std::string &text = corpus(static_cast<int>(state.range(0)));
	Scanner scanner(rules());
	size_t found = 0;
	for (auto _ : state) {
		auto findings = scanner.scan(text, Direction::Both);
		found = findings.size();
		benchmark::DoNotOptimize(findings);
	}
	state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
	state.counters["found"] = static_cast<double>(found);
	state.counters["rules"] = static_cast<double>(rules()->rules().size());
}
BENCHMARK(BM_MaskVectorscan)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond)->MinTime(2);

// vectorscan alone (hits counted, nothing confirmed): the engine's share of BM_MaskVectorscan.
void BM_MaskVectorscanScanOnly(benchmark::State &state)
{
	const std::string &text = corpus(static_cast<int>(state.range(0)));
	const hs_database_t *db = detail::block_database(*rules());
	hs_scratch_t *scratch = nullptr;
	if (hs_alloc_scratch(db, &scratch) != HS_SUCCESS) {
		state.SkipWithError("hs_alloc_scratch");
		return;
	}
	size_t hits = 0;
	auto count = [](unsigned int, unsigned long long, unsigned long long, unsigned int, void *ctx) {
		++*static_cast<size_t *>(ctx);
		return 0;
	};
	for (auto _ : state) {
		hits = 0;
		hs_scan(db, text.data(), static_cast<unsigned int>(text.size()), 0, scratch, count, &hits);
	}
	hs_free_scratch(scratch);
	state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
	state.counters["hits"] = static_cast<double>(hits);
}
BENCHMARK(BM_MaskVectorscanScanOnly)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond)->MinTime(2);

// Scanning plus building the masked copy (what cordond does to a message with secrets in it).
void BM_MaskVectorscanMask(benchmark::State &state)
{
	const std::string &text = corpus(0);
	Scanner scanner(rules());
	for (auto _ : state) {
		std::string out = scanner.mask(text, Direction::Both);
		benchmark::DoNotOptimize(out);
	}
	state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
}
BENCHMARK(BM_MaskVectorscanMask)->Unit(benchmark::kMillisecond)->MinTime(2);

void BM_MaskStreamMasker(benchmark::State &state)
{
	const std::string &text = corpus(0);
	const size_t chunk = static_cast<size_t>(state.range(0));
	Scanner scanner(rules());
	size_t found = 0;
	for (auto _ : state) {
		StreamMasker m(scanner, Direction::Both);
		size_t out = 0;
		for (size_t at = 0; at < text.size(); at += chunk)
			out += m.feed(std::string_view(text).substr(at, chunk)).size();
		out += m.flush().size();
		found = m.findings().size();
		benchmark::DoNotOptimize(out);
	}
	state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
	state.counters["found"] = static_cast<double>(found);
	state.counters["max_hold"] = static_cast<double>(rules()->max_hold());
	state.counters["stream_state_B"] = static_cast<double>(rules()->stream_state_size());
}
BENCHMARK(BM_MaskStreamMasker)->Arg(16384)->Arg(1024)->Unit(benchmark::kMillisecond)->MinTime(2);

// The fixed cost of one masked stream: open, a small write, flush.
void BM_MaskStreamSetup(benchmark::State &state)
{
	Scanner scanner(rules());
	for (auto _ : state) {
		StreamMasker m(scanner, Direction::Both);
		std::string out = m.feed("data: {\"text\": \"hello\"}\n\n");
		out += m.flush();
		benchmark::DoNotOptimize(out);
	}
}
BENCHMARK(BM_MaskStreamSetup)->Unit(benchmark::kMicrosecond);

// What policy load pays: compiling the built-in rules (both vectorscan databases and RE2).
void BM_MaskCompileRules(benchmark::State &state)
{
	for (auto _ : state) {
		auto r = RuleSet::compile(RuleSet::builtin(), {});
		benchmark::DoNotOptimize(r);
	}
	state.counters["max_width"] = static_cast<double>(rules()->max_width());
}
BENCHMARK(BM_MaskCompileRules)->Unit(benchmark::kMillisecond)->Iterations(3);

re2::RE2::Options re2_options()
{
	re2::RE2::Options o;
	o.set_encoding(re2::RE2::Options::EncodingLatin1);
	o.set_log_errors(false);
	o.set_max_mem(1 << 30);
	return o;
}

void BM_MaskRE2Set(benchmark::State &state)
{
	const std::string &text = corpus(static_cast<int>(state.range(0)));
	const auto &specs = rules()->rules();
	re2::RE2::Set set(re2_options(), re2::RE2::UNANCHORED);
	std::vector<std::unique_ptr<re2::RE2>> each;
	for (const auto &r : specs) {
		const std::string p = detail::re2_pattern(r.regex);
		std::string error;
		if (set.Add(p, &error) < 0) {
			state.SkipWithError(("RE2::Set::Add " + r.id + ": " + error).c_str());
			return;
		}
		each.push_back(std::make_unique<re2::RE2>(p, re2_options()));
	}
	if (!set.Compile()) {
		state.SkipWithError("RE2::Set::Compile failed");
		return;
	}
	constexpr size_t kBlock = 64 << 10;
	size_t found = 0, failed = 0;
	for (auto _ : state) {
		found = failed = 0;
		std::vector<int> which;
		for (size_t at = 0; at < text.size(); at += kBlock) {
			const re2::StringPiece block(text.data() + at, std::min(kBlock, text.size() - at));
			re2::RE2::Set::ErrorInfo info;
			which.clear();
			if (!set.Match(block, &which, &info)) {
				if (info.kind != re2::RE2::Set::kNoError)
					failed++;
				continue;
			}
			for (int i : which) { // positions: the set only says which rules matched
				size_t pos = 0;
				re2::StringPiece m;
				while (pos <= block.size() &&
				       each[i]->Match(block, pos, block.size(), re2::RE2::UNANCHORED, &m, 1)) {
					found++;
					const size_t end = static_cast<size_t>(m.data() - block.data()) + m.size();
					pos = m.empty() ? end + 1 : end;
				}
			}
		}
	}
	state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
	state.counters["found"] = static_cast<double>(found);
	state.counters["failed_blocks"] = static_cast<double>(failed);
}
BENCHMARK(BM_MaskRE2Set)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond)->Iterations(1);

void BM_MaskPCRE2JIT(benchmark::State &state)
{
	const std::string &text = corpus(static_cast<int>(state.range(0)));
	struct Code {
		pcre2_code *code = nullptr;
		~Code() { pcre2_code_free(code); }
	};
	std::vector<std::unique_ptr<Code>> codes;
	for (const auto &r : rules()->rules()) {
		int err = 0;
		PCRE2_SIZE offset = 0;
		auto c = std::make_unique<Code>();
		c->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(r.regex.c_str()), PCRE2_ZERO_TERMINATED, 0, &err,
		                        &offset, nullptr);
		if (!c->code || pcre2_jit_compile(c->code, PCRE2_JIT_COMPLETE) != 0) {
			state.SkipWithError(("PCRE2 compile " + r.id).c_str());
			return;
		}
		codes.push_back(std::move(c));
	}
	pcre2_jit_stack *stack = pcre2_jit_stack_create(32 << 10, 8 << 20, nullptr);
	pcre2_match_context *mctx = pcre2_match_context_create(nullptr);
	pcre2_jit_stack_assign(mctx, nullptr, stack);
	pcre2_match_data *md = pcre2_match_data_create(16, nullptr);
	size_t found = 0;
	for (auto _ : state) {
		found = 0;
		for (const auto &c : codes) {
			PCRE2_SIZE at = 0;
			while (at <= text.size()) {
				const int rc = pcre2_jit_match(c->code, reinterpret_cast<PCRE2_SPTR>(text.data()),
				                               text.size(), at, 0, md, mctx);
				if (rc < 0)
					break;
				const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
				found++;
				at = ov[1] > ov[0] ? ov[1] : ov[0] + 1;
			}
		}
	}
	pcre2_match_data_free(md);
	pcre2_match_context_free(mctx);
	pcre2_jit_stack_free(stack);
	state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
	state.counters["found"] = static_cast<double>(found);
}
BENCHMARK(BM_MaskPCRE2JIT)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond)->Iterations(1);

} // namespace
