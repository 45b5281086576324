//! A scatter of up to millions of points: instanced quads drawn by `shaders/scatter.wgsl`.

use std::sync::Arc;

use eframe::egui_wgpu::{self, wgpu, CallbackResources, CallbackTrait, ScreenDescriptor};
use eframe::wgpu::util::DeviceExt as _;

use crate::app::scatter_data::ScatterData;

/// The shader source.
pub const SHADER: &str = include_str!("../../shaders/scatter.wgsl");

/// Uniforms: centre, scale, half point size (NDC), opacity.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ScatterUniforms {
    /// Data-space centre of the view.
    pub center: [f32; 2],
    /// Data units → NDC.
    pub scale: [f32; 2],
    /// Half the point size in NDC.
    pub half_size: [f32; 2],
    /// Opacity in x.
    pub opacity: [f32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Instance {
    point: [f32; 2],
    color: [u8; 4],
}

/// GPU objects kept in egui_wgpu's callback resources.
struct ScatterResources {
    pipeline: wgpu::RenderPipeline,
    uniforms: wgpu::Buffer,
    bind_group: wgpu::BindGroup,
    instances: Option<wgpu::Buffer>,
    generation: u64,
    count: u32,
}

/// Creates the pipeline; returns false (and logs) when the shader cannot be used.
pub fn install(rs: &egui_wgpu::RenderState) -> bool {
    let device = &rs.device;
    let shader = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("scatter"),
        source: wgpu::ShaderSource::Wgsl(SHADER.into()),
    });
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some("scatter"),
        entries: &[wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::VERTEX_FRAGMENT,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        }],
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some("scatter"),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let attributes = wgpu::vertex_attr_array![0 => Float32x2, 1 => Unorm8x4];
    let pipeline = device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
        label: Some("scatter"),
        layout: Some(&pipeline_layout),
        vertex: wgpu::VertexState {
            module: &shader,
            entry_point: Some("vs_main"),
            compilation_options: Default::default(),
            buffers: &[Some(wgpu::VertexBufferLayout {
                array_stride: std::mem::size_of::<Instance>() as u64,
                step_mode: wgpu::VertexStepMode::Instance,
                attributes: &attributes,
            })],
        },
        fragment: Some(wgpu::FragmentState {
            module: &shader,
            entry_point: Some("fs_main"),
            compilation_options: Default::default(),
            targets: &[Some(wgpu::ColorTargetState {
                format: rs.target_format,
                blend: Some(wgpu::BlendState::PREMULTIPLIED_ALPHA_BLENDING),
                write_mask: wgpu::ColorWrites::ALL,
            })],
        }),
        primitive: wgpu::PrimitiveState::default(),
        depth_stencil: None,
        multisample: wgpu::MultisampleState::default(),
        multiview_mask: None,
        cache: None,
    });
    let uniforms = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("scatter uniforms"),
        contents: bytemuck::bytes_of(&ScatterUniforms::default()),
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
    });
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("scatter"),
        layout: &layout,
        entries: &[wgpu::BindGroupEntry {
            binding: 0,
            resource: uniforms.as_entire_binding(),
        }],
    });
    rs.renderer
        .write()
        .callback_resources
        .insert(ScatterResources {
            pipeline,
            uniforms,
            bind_group,
            instances: None,
            generation: u64::MAX,
            count: 0,
        });
    true
}

/// One frame's scatter drawing.
pub struct ScatterCallback {
    /// The points.
    pub data: Arc<ScatterData>,
    /// The view.
    pub uniforms: ScatterUniforms,
}

impl CallbackTrait for ScatterCallback {
    fn prepare(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        _screen: &ScreenDescriptor,
        _encoder: &mut wgpu::CommandEncoder,
        resources: &mut CallbackResources,
    ) -> Vec<wgpu::CommandBuffer> {
        let Some(r) = resources.get_mut::<ScatterResources>() else {
            return Vec::new();
        };
        if r.generation != self.data.generation {
            let instances: Vec<Instance> = self
                .data
                .points
                .iter()
                .zip(&self.data.colors)
                .map(|(p, c)| Instance {
                    point: *p,
                    color: *c,
                })
                .collect();
            r.instances = (!instances.is_empty()).then(|| {
                device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("scatter points"),
                    contents: bytemuck::cast_slice(&instances),
                    usage: wgpu::BufferUsages::VERTEX,
                })
            });
            r.count = instances.len() as u32;
            r.generation = self.data.generation;
        }
        queue.write_buffer(&r.uniforms, 0, bytemuck::bytes_of(&self.uniforms));
        Vec::new()
    }

    fn paint(
        &self,
        _info: egui::PaintCallbackInfo,
        pass: &mut wgpu::RenderPass<'static>,
        resources: &CallbackResources,
    ) {
        let Some(r) = resources.get::<ScatterResources>() else {
            return;
        };
        let Some(buf) = &r.instances else { return };
        pass.set_pipeline(&r.pipeline);
        pass.set_bind_group(0, &r.bind_group, &[]);
        pass.set_vertex_buffer(0, buf.slice(..));
        pass.draw(0..6, 0..r.count);
    }
}

/// The paint callback for `rect`.
pub fn paint_callback(rect: egui::Rect, callback: ScatterCallback) -> egui::PaintCallback {
    egui_wgpu::Callback::new_paint_callback(rect, callback)
}
