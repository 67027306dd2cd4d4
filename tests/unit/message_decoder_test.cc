#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>
#include <google/protobuf/dynamic_message.h>
#include <google/protobuf/text_format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "proxy/message_decoder.h"

using namespace cordon::proxy;
using cordon::rpc::RpcName;
using nlohmann::json;
namespace fs = std::filesystem;
namespace pb = google::protobuf;

namespace {

// ---- wire bytes by hand ----

std::string varint(uint64_t v)
{
	std::string out;
	while (v >= 0x80) {
		out += static_cast<char>(v | 0x80);
		v >>= 7;
	}
	out += static_cast<char>(v);
	return out;
}
std::string tag(uint32_t number, int type)
{
	return varint(uint64_t{number} << 3 | type);
}
std::string vfield(uint32_t number, uint64_t v)
{
	return tag(number, 0) + varint(v);
}
std::string lfield(uint32_t number, const std::string &bytes)
{
	return tag(number, 2) + varint(bytes.size()) + bytes;
}
std::string hex(const std::string &bytes)
{
	static const char digits[] = "0123456789abcdef";
	std::string out;
	for (unsigned char c : bytes) {
		out += digits[c >> 4];
		out += digits[c & 15];
	}
	return out;
}

// The output must always be one valid JSON document, within the bound.
json parse(const std::string &out)
{
	EXPECT_LE(out.size(), kDecoderMaxOutput);
	json j = json::parse(out, nullptr, false);
	EXPECT_FALSE(j.is_discarded()) << "not JSON: " << out.substr(0, 400);
	return j;
}

size_t depth_of(const json &j)
{
	size_t deepest = 0;
	if (j.is_structured())
		for (const auto &child : j)
			deepest = std::max(deepest, depth_of(child));
	return j.is_structured() ? deepest + 1 : 0;
}

// The descriptor set the way the Makefile builds build/cursor.desc, from proto/ in the tree.
std::string find_proto_dir()
{
	std::vector<fs::path> candidates = {"proto", fs::path(__FILE__).parent_path() / "../../proto"};
	std::error_code ec;
	fs::path exe = fs::read_symlink("/proc/self/exe", ec);
	if (!ec)
		candidates.push_back(exe.parent_path() / "../proto");
	for (const auto &c : candidates)
		if (fs::is_directory(c / "cursor", ec))
			return c.string();
	return {};
}

class MessageDecoderTest : public testing::Test {
protected:
	static void SetUpTestSuite()
	{
		const std::string proto = find_proto_dir();
		if (proto.empty()) {
			setup_error_ = "proto/cursor not found";
			return;
		}
		std::vector<std::string> files;
		for (const auto &e : fs::recursive_directory_iterator(fs::path(proto) / "cursor"))
			if (e.path().extension() == ".proto")
				files.push_back(fs::relative(e.path(), proto).string());
		desc_path_ = (fs::temp_directory_path() / ("cordon-decoder-test-" + std::to_string(getpid()) + ".desc"))
		                 .string();
		std::string command =
		    "protoc -I'" + proto + "' --include_imports --descriptor_set_out='" + desc_path_ + "'";
		for (const auto &f : files)
			command += " '" + f + "'";
		if (std::system(command.c_str()) != 0) {
			setup_error_ = "failed: " + command;
			return;
		}
		auto loaded = MessageDecoder::load(desc_path_);
		if (!loaded) {
			setup_error_ = loaded.error().message();
			return;
		}
		decoder_ = std::move(*loaded).release();

		// The test's own pool, as protoc wrote it, to build real messages.
		std::ifstream in(desc_path_, std::ios::binary);
		pb::FileDescriptorSet set;
		if (!set.ParseFromIstream(&in)) {
			setup_error_ = "cannot read " + desc_path_;
			return;
		}
		pool_ = new pb::DescriptorPool;
		for (const auto &file : set.file())
			if (!pool_->BuildFile(file)) {
				setup_error_ = "cannot build " + file.name();
				return;
			}
		factory_ = new pb::DynamicMessageFactory(pool_);
	}
	static void TearDownTestSuite()
	{
		delete decoder_;
		delete factory_;
		delete pool_;
		decoder_ = nullptr;
		factory_ = nullptr;
		pool_ = nullptr;
		if (!desc_path_.empty())
			fs::remove(desc_path_);
	}
	void SetUp() override { ASSERT_TRUE(decoder_ && factory_) << setup_error_; }

	// A real message of `type` from text format, serialized.
	static std::string encode(const std::string &type, const std::string &text)
	{
		const pb::Descriptor *d = pool_->FindMessageTypeByName(type);
		EXPECT_TRUE(d) << type;
		if (!d)
			return {};
		std::unique_ptr<pb::Message> m(factory_->GetPrototype(d)->New());
		EXPECT_TRUE(pb::TextFormat::ParseFromString(text, m.get())) << text;
		return m->SerializeAsString();
	}

	static json typed(const std::string &type, const std::string &payload)
	{
		return parse(decoder_->to_json_typed(type, payload));
	}

	static inline MessageDecoder *decoder_ = nullptr;
	static inline pb::DescriptorPool *pool_ = nullptr;
	static inline pb::DynamicMessageFactory *factory_ = nullptr;
	static inline std::string desc_path_;
	static inline std::string setup_error_;
};

const RpcName kChat{"aiserver.v1.ChatService", "StreamUnifiedChatWithTools"};
const RpcName kRun{"agent.v1.AgentService", "Run"};
const RpcName kBidiAppend{"aiserver.v1.BidiService", "BidiAppend"};

TEST_F(MessageDecoderTest, MessageTypeOfEachRpcDirection)
{
	EXPECT_EQ(decoder_->message_type(kChat, Direction::Request), "aiserver.v1.StreamUnifiedChatRequestWithTools");
	EXPECT_EQ(decoder_->message_type(kChat, Direction::Response), "aiserver.v1.StreamUnifiedChatResponseWithTools");
	EXPECT_EQ(decoder_->message_type(kRun, Direction::Request), "agent.v1.AgentClientMessage");
	EXPECT_EQ(decoder_->message_type(kRun, Direction::Response), "agent.v1.AgentServerMessage");
	EXPECT_EQ(decoder_->message_type({"agent.v1.AgentService", "RunSSE"}, Direction::Request),
	          "aiserver.v1.BidiRequestId");
	EXPECT_EQ(decoder_->message_type(kBidiAppend, Direction::Request), "aiserver.v1.BidiAppendRequest");
	EXPECT_EQ(decoder_->message_type({"aiserver.v1.ChatService", "NoSuchMethod"}, Direction::Request), "");
	EXPECT_EQ(decoder_->message_type({"no.Such", "Run"}, Direction::Request), "");
	EXPECT_EQ(decoder_->message_type({}, Direction::Request), "");
	EXPECT_EQ(MessageDecoder::generic_only()->message_type(kChat, Direction::Request), "");
}

TEST_F(MessageDecoderTest, ChatRequestWithNamesEnumsNestedAndRepeatedFields)
{
	const std::string payload = encode("aiserver.v1.StreamUnifiedChatRequestWithTools", R"(
		stream_unified_chat_request {
		  conversation { text: "fix the build" type: MESSAGE_TYPE_HUMAN bubble_id: "b1"
		    attached_code_chunks { relative_workspace_path: "src/a.cc" start_line_number: 3
		                           lines: "int x;" lines: "int y;" } }
		  conversation { text: "done" type: MESSAGE_TYPE_AI }
		  model_details { model_name: "claude" }
		  conversation_id: "c-42"
		})");
	const json j = parse(decoder_->to_json(kChat, Direction::Request, payload, false));
	const json &r = j.at("stream_unified_chat_request");
	ASSERT_EQ(r.at("conversation").size(), 2u);
	EXPECT_EQ(r["conversation"][0]["text"], "fix the build");
	EXPECT_EQ(r["conversation"][0]["type"], "MESSAGE_TYPE_HUMAN");
	EXPECT_EQ(r["conversation"][0]["bubble_id"], "b1");
	const json &chunk = r["conversation"][0]["attached_code_chunks"][0];
	EXPECT_EQ(chunk["relative_workspace_path"], "src/a.cc");
	EXPECT_EQ(chunk["start_line_number"], 3);
	EXPECT_EQ(chunk["lines"], json({"int x;", "int y;"}));
	EXPECT_EQ(r["conversation"][1]["type"], "MESSAGE_TYPE_AI");
	EXPECT_EQ(r["model_details"]["model_name"], "claude");
	EXPECT_EQ(r["conversation_id"], "c-42");
	// proto3: fields left at their default are not on the wire, so not in the JSON either.
	EXPECT_FALSE(r.contains("current_file"));
}

TEST_F(MessageDecoderTest, ExecShellCommandFromTheAgentServer)
{
	const std::string payload = encode("agent.v1.AgentServerMessage", R"(
		exec_server_message { id: 7 exec_id: "x-1"
		  shell_args { command: "rm -rf /" working_directory: "/work" timeout: -1 } })");
	const std::string out = decoder_->to_json(kRun, Direction::Response, payload, false);
	EXPECT_EQ(out, R"({"exec_server_message":{"id":7,"shell_args":{"command":"rm -rf /",)"
	               R"("working_directory":"/work","timeout":-1},"exec_id":"x-1"}})");
}

TEST_F(MessageDecoderTest, EnumValuesByNameAndNewerValuesByNumber)
{
	json j = parse(
	    decoder_->to_json(kChat, Direction::Response,
	                      encode("aiserver.v1.StreamUnifiedChatResponseWithTools",
	                             R"(client_side_tool_v2_call { tool: CLIENT_SIDE_TOOL_V2_RUN_TERMINAL_COMMAND_V2
	              tool_call_id: "t1" raw_args: "{\"command\":\"ls\"}" })"),
	                      false));
	EXPECT_EQ(j["client_side_tool_v2_call"]["tool"], "CLIENT_SIDE_TOOL_V2_RUN_TERMINAL_COMMAND_V2");
	EXPECT_EQ(j["client_side_tool_v2_call"]["raw_args"], R"({"command":"ls"})");

	// tool = 99: not in the descriptor, so its number.
	j = typed("aiserver.v1.ClientSideToolV2Call", vfield(1, 99) + lfield(3, "t2"));
	EXPECT_EQ(j["tool"], 99);
	EXPECT_EQ(j["tool_call_id"], "t2");
}

TEST_F(MessageDecoderTest, FieldsTheDescriptorDoesNotKnowAppearByNumber)
{
	const std::string payload = encode("agent.v1.ShellArgs", R"(command: "make")") + vfield(9, 7) +
	                            lfield(10, "hello there") + lfield(11, lfield(1, "x") + vfield(2, 5)) +
	                            vfield(12, 1) + vfield(12, 2) + tag(13, 5) + std::string("\x01\0\0\0", 4) +
	                            tag(14, 1) + std::string("\x02\0\0\0\0\0\0\0", 8);
	const json j = typed("agent.v1.ShellArgs", payload);
	EXPECT_EQ(j["command"], "make");
	EXPECT_EQ(j["#9"], 7);
	EXPECT_EQ(j["#10"], "hello there");
	EXPECT_EQ(j["#11"], json::parse(R"({"#1":"x","#2":5})"));
	EXPECT_EQ(j["#12"], json({1, 2}));
	EXPECT_EQ(j["#13"], 1);
	EXPECT_EQ(j["#14"], 2);

	// A known number with the wrong wire type is not that field: it is kept by number.
	const json k = typed("agent.v1.ShellArgs", vfield(1, 3));
	EXPECT_FALSE(k.contains("command"));
	EXPECT_EQ(k["#1"], 3);
}

TEST_F(MessageDecoderTest, StreamStartDeclaredEmptyShowsWhatCursorSends)
{
	const std::string start = lfield(1, "srv-9") + vfield(2, 1700000000);
	const json j = parse(decoder_->to_json(kChat, Direction::Response, lfield(5, start), false));
	EXPECT_EQ(j, json::parse(R"({"stream_start":{"#1":"srv-9","#2":1700000000}})"));
}

TEST_F(MessageDecoderTest, GenericDecodingWithoutAType)
{
	const std::string payload =
	    vfield(1, 150) + lfield(2, "readable text\nwith a newline") + lfield(3, lfield(1, "inner") + vfield(2, 1)) +
	    lfield(4, "") + lfield(5, std::string("\x00\xff\x10\x80", 4)) + vfield(6, 1) + vfield(6, 2) + vfield(6, 3) +
	    vfield(7, uint64_t{1} << 60) + tag(8, 5) + std::string("\x2a\0\0\0", 4) + vfield(9, ~uint64_t{0});
	const std::string out = decoder_->to_json({"unknown.v1.Service", "Method"}, Direction::Request, payload, false);
	EXPECT_EQ(out, R"({"#1":150,"#2":"readable text\nwith a newline","#3":{"#1":"inner","#2":1},"#4":"",)"
	               R"("#5":{"#hex":"00ff1080"},"#6":[1,2,3],"#7":"1152921504606846976","#8":42,)"
	               R"("#9":"18446744073709551615"})");
	EXPECT_EQ(decoder_->to_json_generic(payload), out);
	EXPECT_EQ(MessageDecoder::generic_only()->to_json(kChat, Direction::Request, payload, false), out);
	EXPECT_EQ(decoder_->to_json_typed("no.such.Type", payload), out);
}

TEST_F(MessageDecoderTest, GenericTakesShortWordsAsTextNotAsMessages)
{
	// "hi" would parse as field 13 = 105; "\n\x05hello" (field 1 = "hello") has a control byte.
	EXPECT_EQ(decoder_->to_json_generic(lfield(1, "hi")), R"({"#1":"hi"})");
	EXPECT_EQ(decoder_->to_json_generic(lfield(1, lfield(1, "hello"))), R"({"#1":{"#1":"hello"}})");
	// Bytes that are not UTF-8 at any level, nested or not, are hex.
	EXPECT_EQ(decoder_->to_json_generic(lfield(1, "\xc3\x28")), R"({"#1":{"#hex":"c328"}})");
	// Non-shortest varints are what no encoder writes: text, not a message.
	EXPECT_EQ(decoder_->to_json_generic(lfield(1, std::string("\x08\x80\x00", 3))), R"({"#1":{"#hex":"088000"}})");
}

TEST_F(MessageDecoderTest, JsonCodecPayloadsPassThrough)
{
	const std::string body = R"({"accessToken": "eyJ...", "n": [1, 2.5, null]})";
	EXPECT_EQ(decoder_->to_json({}, Direction::Response, body, true), body);
	EXPECT_EQ(decoder_->to_json(kChat, Direction::Request, "{}", true), "{}");
	// Not JSON: a JSON string of it.
	EXPECT_EQ(parse(decoder_->to_json({}, Direction::Request, "not json \"quoted\"", true)), "not json \"quoted\"");
	EXPECT_EQ(parse(decoder_->to_json({}, Direction::Request, "", true)), "");
	// Not even text: hex.
	const json j = parse(decoder_->to_json({}, Direction::Request, std::string("{\"a\":\"\xff\"}"), true));
	EXPECT_EQ(j["#raw_hex"], "7b2261223a22ff227d");
	EXPECT_EQ(j["#length"], 9);
	// Nesting that would exhaust a recursive parser is validated without recursion.
	const std::string deep = std::string(200000, '[') + std::string(200000, ']');
	EXPECT_EQ(decoder_->to_json({}, Direction::Request, deep, true), deep);
}

TEST_F(MessageDecoderTest, BidiAppendHexDataIsDecodedOneLevelDeeper)
{
	const std::string client = encode("agent.v1.AgentClientMessage", R"(
		run_request { action { user_message_action { user_message { text: "deploy with key crsr_abc"
		  selected_context { files { path: ".env" content: "TOKEN=1" } } } } } })");
	const std::string payload =
	    encode("aiserver.v1.BidiAppendRequest",
	           "data: \"" + hex(client) + "\" request_id { request_id: \"r-1\" } append_seqno: 3");
	const json j = parse(decoder_->to_json(kBidiAppend, Direction::Request, payload, false));
	EXPECT_EQ(j["data"], hex(client));
	EXPECT_EQ(j["request_id"]["request_id"], "r-1");
	EXPECT_EQ(j["append_seqno"], 3);
	const json &message =
	    j.at("data#decoded").at("run_request").at("action").at("user_message_action").at("user_message");
	EXPECT_EQ(message["text"], "deploy with key crsr_abc");
	EXPECT_EQ(message["selected_context"]["files"][0]["content"], "TOKEN=1");

	// The binary form: the bytes are not text, so hex, and decoded beside.
	const json b = typed("aiserver.v1.BidiAppendRequest", lfield(4, client));
	EXPECT_EQ(b["data_binary"]["#hex"], hex(client));
	EXPECT_EQ(b["data_binary#decoded"], j["data#decoded"]);

	// Data that is not hex of a message is left as it is.
	for (const std::string &data : {std::string("not hex"), std::string("abc"), std::string("ffff")}) {
		const json n = typed("aiserver.v1.BidiAppendRequest", lfield(1, data));
		EXPECT_EQ(n["data"], data);
		EXPECT_FALSE(n.contains("data#decoded")) << data;
	}
}

TEST_F(MessageDecoderTest, McpArgumentsReadAsTheJsonTheyStandFor)
{
	const std::string payload = encode("agent.v1.AgentServerMessage", R"(
		exec_server_message { mcp_args { name: "fs" tool_name: "read"
		  args { key: "path" value { string_value: "/etc/shadow" } }
		  args { key: "limit" value { number_value: 10 } }
		  args { key: "follow" value { bool_value: true } }
		  args { key: "none" value { null_value: NULL_VALUE } }
		  args { key: "list" value { list_value { values { number_value: 1.5 } values { string_value: "x" } } } }
		  args { key: "obj" value { struct_value { fields { key: "k" value { string_value: "v" } } } } }
		} })");
	const json j = parse(decoder_->to_json(kRun, Direction::Response, payload, false));
	EXPECT_EQ(j["exec_server_message"]["mcp_args"]["args"],
	          json::parse(R"({"path":"/etc/shadow","limit":10,"follow":true,"none":null,"list":[1.5,"x"],)"
	                      R"("obj":{"k":"v"}})"));
	EXPECT_EQ(j["exec_server_message"]["mcp_args"]["tool_name"], "read");
}

TEST_F(MessageDecoderTest, MapEntriesForTheSameKeyKeepTheLast)
{
	const auto entry = [](const std::string &key, const std::string &value) {
		return lfield(2, lfield(1, key) + lfield(2, lfield(3, value)));
	};
	const json j = typed("agent.v1.McpArgs", entry("a", "1") + entry("b", "2") + entry("a", "3"));
	EXPECT_EQ(j["args"].dump(), R"({"a":"3","b":"2"})");
}

TEST_F(MessageDecoderTest, NumbersKeepTheirValue)
{
	const json j = typed("agent.v1.TurnEndedUpdate", vfield(1, uint64_t{1} << 60) + vfield(2, 12345));
	EXPECT_EQ(j["input_tokens"], "1152921504606846976"); // past 2^53: a string, digits intact
	EXPECT_EQ(j["output_tokens"], 12345);
	EXPECT_EQ(typed("agent.v1.TurnEndedUpdate", vfield(1, static_cast<uint64_t>(int64_t{-5})))["input_tokens"], -5);
	// proto3 `optional`: present at zero is still shown.
	EXPECT_EQ(typed("agent.v1.TurnEndedUpdate", vfield(1, 0))["input_tokens"], 0);
	EXPECT_EQ(typed("agent.v1.ShellSuccess", vfield(1, static_cast<uint64_t>(int64_t{-1})))["exit_code"], -1);
	EXPECT_EQ(typed("aiserver.v1.AvailableModelsRequest", vfield(1, 1))["is_nightly"], true);
}

TEST_F(MessageDecoderTest, StringFieldThatIsNotUtf8KeepsTheRestOfTheMessage)
{
	// proto3 would refuse the whole message; the other fields still decode by name.
	const std::string payload = lfield(1, "ls") + lfield(2, "\xff\xfe/tmp") + vfield(3, 30);
	const json j = typed("agent.v1.ShellArgs", payload);
	EXPECT_EQ(j["command"], "ls");
	EXPECT_EQ(j["working_directory"]["#hex"], "fffe2f746d70");
	EXPECT_EQ(j["timeout"], 30);
	// Text with control characters is still text in a string field.
	EXPECT_EQ(typed("agent.v1.ShellArgs", lfield(1, std::string("a\0b\x1b[0m", 7)))["command"],
	          std::string("a\0b\x1b[0m", 7));
}

TEST_F(MessageDecoderTest, BinaryBytesAreHexWithinABound)
{
	const std::string blob(10000, '\xee');
	const json j = typed("aiserver.v1.BidiAppendRequest", lfield(4, blob));
	EXPECT_EQ(j["data_binary"]["#hex"].get<std::string>().size(), 2 * kDecoderMaxHexBytes);
	EXPECT_EQ(j["data_binary"]["#length"], 10000);
	EXPECT_EQ(typed("aiserver.v1.BidiAppendRequest", lfield(4, "plain text"))["data_binary"], "plain text");
}

TEST_F(MessageDecoderTest, UndecodableBytesBecomeRawHexWithTheirLength)
{
	const std::vector<std::string> bad = {
	    std::string("\x08", 1),                       // varint missing
	    std::string("\x08\xff\xff", 3),               // truncated varint
	    lfield(1, "abc").substr(0, 4),                // length past the end
	    tag(1, 2) + varint(uint64_t{1} << 62) + "x",  // huge declared length
	    std::string("\x00\x01", 2),                   // field number 0
	    tag(1, 6),                                    // no such wire type
	    tag(1, 0) + std::string(10, '\xff') + "\x01", // varint past 64 bits
	    tag(1, 1) + "1234567",                        // fixed64 short
	};
	for (const std::string &b : bad) {
		const json j = parse(decoder_->to_json_generic(b));
		EXPECT_EQ(j["#raw_hex"], hex(b));
		EXPECT_EQ(j["#length"], b.size());
		// As a known type, protobuf refuses it too, and it ends the same.
		EXPECT_EQ(parse(decoder_->to_json(kRun, Direction::Request, b, false)), j);
	}
	// A group (long deprecated): protobuf would take it, but not within our bounds on its cost.
	const std::string group = tag(1, 3) + vfield(1, 1) + tag(1, 4);
	EXPECT_EQ(parse(decoder_->to_json(kRun, Direction::Request, group, false))["#raw_hex"], "0b08010c");
	const std::string big(100000, '\xff');
	const json j = parse(decoder_->to_json_generic(big));
	EXPECT_EQ(j["#raw_hex"].get<std::string>().size(), 2 * kDecoderMaxHexBytes);
	EXPECT_EQ(j["#length"], 100000);
	// Empty is a valid (empty) message.
	EXPECT_EQ(decoder_->to_json_generic(""), "{}");
	EXPECT_EQ(decoder_->to_json(kRun, Direction::Request, "", false), "{}");
}

TEST_F(MessageDecoderTest, DeepNestingIsBounded)
{
	// 100000 levels of field 1 wrapping field 1 (built outside in: wrapping would copy 40 GB).
	const std::string inner = vfield(2, 1);
	std::vector<std::string> headers;
	size_t length = inner.size();
	for (int i = 0; i < 100000; i++) {
		headers.push_back(tag(1, 2) + varint(length));
		length += headers.back().size();
	}
	std::string nested;
	for (auto it = headers.rbegin(); it != headers.rend(); ++it)
		nested += *it;
	nested += inner;
	ASSERT_EQ(nested.size(), length);
	for (const std::string &out :
	     {decoder_->to_json_generic(nested), decoder_->to_json(kChat, Direction::Request, nested, false),
	      decoder_->to_json_typed("google.protobuf.Value", nested)}) {
		const json j = parse(out);
		EXPECT_LE(depth_of(j), static_cast<size_t>(kDecoderMaxDepth) * 3 + 3);
	}

	// Recursive known types (Value -> ListValue -> Value ...) within protobuf's own limit.
	std::string value = lfield(3, "leaf");       // string_value
	for (int i = 0; i < 45; i++)                 // 90 levels: within protobuf's 100, past ours
		value = lfield(6, lfield(1, value)); // list_value { values { ... } }
	const json j = parse(decoder_->to_json_typed("google.protobuf.ListValue", lfield(1, value)));
	EXPECT_LE(depth_of(j), static_cast<size_t>(kDecoderMaxDepth) * 3 + 3);
	EXPECT_NE(j.dump().find("#hex"), std::string::npos); // the part past the depth bound
}

TEST_F(MessageDecoderTest, OutputIsCutAtTheBoundAndSaysSo)
{
	// A 4 MiB file in a chat request: the JSON stops near 1 MiB, still valid, marked.
	const std::string file(4 << 20, 'a');
	const std::string payload =
	    lfield(1, lfield(15, lfield(1, "big.txt") + lfield(2, file)) + lfield(23, "conv-after-the-file"));
	const std::string out = decoder_->to_json(kChat, Direction::Request, payload, false);
	EXPECT_GT(out.size(), kDecoderMaxOutput - 4096);
	const json j = parse(out);
	EXPECT_EQ(j["#truncated"], true);
	EXPECT_EQ(j["stream_unified_chat_request"]["#truncated"], true);
	EXPECT_EQ(j["stream_unified_chat_request"]["current_file"]["relative_workspace_path"], "big.txt");

	// A million tiny fields, generically: cut, and quickly.
	std::string many;
	for (int i = 0; i < 1000000; i++)
		many += vfield(static_cast<uint32_t>(i % 5000 + 1), 1);
	const auto start = std::chrono::steady_clock::now();
	const json g = parse(decoder_->to_json_generic(many));
	EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
	EXPECT_EQ(g["#truncated"], true);

	// Text over the bound with the JSON codec: a cut string, with its length.
	const std::string text(3 << 20, '"');
	const json t = parse(decoder_->to_json({}, Direction::Request, text, true));
	EXPECT_EQ(t["#length"], text.size());
	EXPECT_EQ(t["#truncated"], true);
	EXPECT_GT(t["#text"].get<std::string>().size(), 100000u);
}

TEST_F(MessageDecoderTest, SmallFieldsCannotMakeTheParserBalloon)
{
	// 8 MB of empty conversation messages would cost protobuf's parser ~500 MB of message objects:
	// decoded generically instead, with the generic decoder's own bounds.
	std::string conversation;
	for (int i = 0; i < 4000000; i++)
		conversation += lfield(1, "");
	const std::string payload = lfield(1, conversation);
	const auto start = std::chrono::steady_clock::now();
	const json j = parse(decoder_->to_json(kChat, Direction::Request, payload, false));
	EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
	EXPECT_TRUE(j.contains("#1"));
	EXPECT_EQ(j["#truncated"], true);

	// The same shape at a sane size keeps its names.
	std::string few;
	for (int i = 0; i < 1000; i++)
		few += lfield(1, "");
	const json k = parse(decoder_->to_json(kChat, Direction::Request, lfield(1, few), false));
	EXPECT_EQ(k["stream_unified_chat_request"]["conversation"].size(), 1000u);
}

TEST_F(MessageDecoderTest, EscapesEverythingJsonRequires)
{
	const std::string nasty = std::string("q\"b\\s/\b\f\n\r\t\x01\x1f\x7f", 13) + "é中😀";
	const json j = typed("agent.v1.ShellArgs", lfield(1, nasty));
	EXPECT_EQ(j["command"], nasty);
	const std::string out = decoder_->to_json_typed("agent.v1.ShellArgs", lfield(1, nasty));
	EXPECT_EQ(out.find('\n'), std::string::npos); // compact: one line
}

TEST_F(MessageDecoderTest, LoadReportsWhatIsWrong)
{
	auto missing = MessageDecoder::load("/nonexistent/cursor.desc");
	ASSERT_FALSE(missing);
	EXPECT_NE(missing.error().message().find("/nonexistent/cursor.desc"), std::string::npos);

	const std::string garbage = desc_path_ + ".garbage";
	std::ofstream(garbage) << "this is not a descriptor set";
	auto bad = MessageDecoder::load(garbage);
	EXPECT_FALSE(bad);

	// A set without its imports (no --include_imports) cannot be built.
	std::ifstream in(desc_path_, std::ios::binary);
	pb::FileDescriptorSet set;
	ASSERT_TRUE(set.ParseFromIstream(&in));
	pb::FileDescriptorSet partial;
	for (const auto &f : set.file())
		if (f.name() == "cursor/agent/v1/agent.proto")
			*partial.add_file() = f;
	std::ofstream(garbage, std::ios::binary | std::ios::trunc) << partial.SerializeAsString();
	auto incomplete = MessageDecoder::load(garbage);
	ASSERT_FALSE(incomplete);
	EXPECT_NE(incomplete.error().message().find("missing"), std::string::npos) << incomplete.error().message();

	// An empty set still decodes generically.
	std::ofstream(garbage, std::ios::binary | std::ios::trunc);
	auto empty = MessageDecoder::load(garbage);
	ASSERT_TRUE(empty) << empty.error().message();
	EXPECT_EQ((*empty)->to_json(kRun, Direction::Request, vfield(1, 2), false), R"({"#1":2})");
	fs::remove(garbage);
}

} // namespace
