from transformers import AutoTokenizer
from pagedllm import LLM, SamplingParams
import os
os.environ['CUDA_VISIBLE_DEVICES'] = '0'

# 模型的路径
model_path = 'MODEL_PATH'
# 构建tokenizer
tokenizer = AutoTokenizer.from_pretrained(model_path)
# 构建LLM
llm = LLM(model=model_path)
# 推理用参数
sampling_params = SamplingParams(temperature=0.7, top_p=0.8, repetition_penalty=1.05, max_tokens=512)
# prompt
messages = [
    {"role": "system", "content": "你是一个医疗小助手"},
]
# 运行
for query in ['我肚子有些不舒服', "请问有什么可以缓解的药物吗？"]:
    messages.append({
        'role': 'user',
        'content': query
    })
    # 使用chat模板
    text = tokenizer.apply_chat_template(
        messages,
        tokenize=False,
        add_generation_prompt=True
    )
    # 推理
    outputs = llm.generate([text], sampling_params)
    # 获取回答
    response = outputs[-1].outputs[0].text
    print(f'query: {query}')
    print(f'response: {response}')
    messages.append({'role': 'assistant', 'content': response})

