from pagedllm import LLM, SamplingParams
from transformers import AutoTokenizer

# 加载Qwen专用tokenizer（确保格式对齐）
tokenizer = AutoTokenizer.from_pretrained("MODEL_PATH")

# 初始化模型（启用确定性配置）
llm = LLM(
    model="MODEL_PATH",
    dtype="half",
    gpu_memory_utilization=0.9,
    enforce_eager=True,
    block_size=32,  # 提升长文本稳定性 [3](@ref)
    disable_log_stats=True
)

# 严格约束的生成参数
sampling_params = SamplingParams(
    temperature=0.3,
    top_p=0.9,
    min_p=0.02,
    repetition_penalty=1.1,
    frequency_penalty=0.2,
    presence_penalty=0.1,
    max_tokens=128,
    stop_token_ids=[tokenizer.eos_token_id]  # 直接使用tokenizer的eos_id
)

# 构建符合Qwen指令格式的提示 [4,8](@ref)
def build_prompt(user_query):
    return [
        {"role": "system", "content": "你是一名医生，回答需基于医学常识"},
        {"role": "user", "content": user_query}
    ]

prompts = [
    tokenizer.apply_chat_template(build_prompt("你好！"), tokenize=False),
    tokenizer.apply_chat_template(build_prompt("我有些肚子疼，怎么办"), tokenize=False)
]

# 预热模型（避免首次生成异常）[3](@ref)
_ = llm.generate("预热", sampling_params=SamplingParams(max_tokens=10))

# 正式推理
outputs = llm.generate(prompts, sampling_params)
for output in outputs:
    print(f"输入：{output.prompt}\n生成：{output.outputs[0].text.strip()}\n")
